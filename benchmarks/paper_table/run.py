"""Leave-one-domain-out reproduction of EigenLoRAx's central claim on the VADER task family (issues 5 and 12).

For each held-out domain the subspace is built only from the other three domains' nine source adapters
(`adapters/<domain>-<type>`), then every method trains on the held-out domain's binary task with the same step
budget, batch, sequence length and head. Each run's result is a JSON file under `runs/`, so an interrupted run
resumes; `report.py` turns them into the Markdown/JSON report. Does not retrain the source adapters.

Learning rates (issue 12, "fair baselines"): the `sweep` grid trains every method at seed 0 on all rows of each
domain at each rate of SWEEP; per method the rate with the best validation accuracy, averaged over the four
domains, is the pick (`report.pick_lrs`), and the main and low-data grids run at the picks. Sweep runs are the main
grid's seed-0 runs at their rate, so the pick's seed 0 is never trained twice. Run files made before the sweep have
no rate in their name: they ran at LEGACY_LR and are reused wherever that is the rate asked for. The `probe` method
is head-only as a logistic regression on the frozen model's mean-pooled features (`builder.probe`), C picked on the
same validation rows.

    .venv/bin/python benchmarks/paper_table/run.py            # sweep, then main + lowdata at the picks (1 thread)
    .venv/bin/python benchmarks/paper_table/run.py --grids sweep,main   # a subset, in this order
    .venv/bin/python benchmarks/paper_table/run.py --quick    # one domain, one seed, a few steps (tests)
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from report import LEGACY_LR, SWEEP, pick_lrs  # noqa: E402

from edge_lorax.builder.baselines import baseline_model, count_params  # noqa: E402
from edge_lorax.builder.data import VADER_DOMAINS, VADER_TYPES, Split, Task, load_task  # noqa: E402
from edge_lorax.builder.loop import TrainConfig, encode, evaluate, fit  # noqa: E402
from edge_lorax.builder.models import default_model_path, head_module, load_tokenizer  # noqa: E402
from edge_lorax.builder.probe import fit_features, load_encoder, pooled_features  # noqa: E402
from edge_lorax.builder.project import project_adapter  # noqa: E402
from edge_lorax.builder.subspace import build_subspace, random_like  # noqa: E402
from edge_lorax.builder.train import apply_user, coeff_model, user_coefficients  # noqa: E402
from edge_lorax.formats.subspace import Subspace  # noqa: E402
from edge_lorax.formats.user import write_user  # noqa: E402

ADAPTERS = ROOT / "adapters"
TRAINED = ("eigen-drop", "eigen-keep", "random", "lora", "head", "vera")
# Low data asks "EigenLoRAx vs LoRA with little data" (and mean kept vs dropped); VeRA, head-only and the random
# control are main-grid only, which keeps the whole plan inside the 90-minute budget on 2 cores.
LOWDATA = ("eigen-drop", "eigen-keep", "lora")
# report.LEGACY_LR: the rates before the sweep (coefficients 2e-2, the then CLI defaults for the baselines); run
# files without a rate in their name ran at these, and the ablation grid still does. report.SWEEP: three rates per
# trained method, the legacy rate among them; one rule for all (best mean validation accuracy over the four domains
# at seed 0, all rows). eigen-drop with the paper's uniform init uses eigen-drop's pick.
VERA_RANK = 256  # the paper's VeRA setting
VAL_ROWS = 128  # validation rows scored during training (steps-to-95%); the test split is scored whole


@dataclass(frozen=True)
class Run:
    domain: str
    method: str  # TRAINED or "projection-drop" / "projection-keep"
    rows: str  # "64" | "256" | "all" training examples
    seed: int
    k: int | None = 8  # None: every principal direction the nine sources give
    augment: int = 0
    init: str = "zero_b"
    grid: str = "main"  # "main" | "lowdata" | "ablation" | "quick"; sweep runs are main-grid runs at seed 0
    lr: float | None = None  # None: the legacy rate (LEGACY_LR); projections and the probe train nothing

    @property
    def legacy_key(self) -> str:
        """The file name stem without the rate (files made before the sweep, at LEGACY_LR)."""
        return f"{self.grid}_{self.domain}_{self.method}_n{self.rows}_k{self.k}_a{self.augment}_{self.init}_s{self.seed}"

    @property
    def key(self) -> str:
        return self.legacy_key + ("" if self.lr is None else f"_lr{self.lr:g}")


def sweep_plan() -> list:
    """Seed 0, all rows, every domain, every rate of SWEEP for each trained method (main-grid runs)."""
    return [Run(d, m, "all", 0, lr=lr) for m in SWEEP for lr in SWEEP[m] for d in VADER_DOMAINS]


def plan(quick: bool, seeds: int, grids=("main", "lowdata", "ablation"), picks: dict | None = None) -> list:
    """The runs, grid by grid: main (all rows, with projections, the probe and the paper's uniform init on every
    domain), low data (256, 64, with the probe), ablations on amazon (legacy rate). `picks` {method: lr} from the
    sweep is needed by main and lowdata."""
    if quick:
        return [Run("amazon", m, "64", 0, grid="quick") for m in TRAINED + ("projection-drop", "probe")]
    runs, lr = [], lambda m: picks[m]  # noqa: E731
    if ("main" in grids or "lowdata" in grids) and not (picks and set(SWEEP) <= set(picks)):
        raise SystemExit(f"main/lowdata need the sweep's picks (have {picks}): run `run.py --grids sweep` first")
    if "main" in grids:
        runs += [Run(d, f"projection-{mean}", "all", 0) for d in VADER_DOMAINS for mean in ("drop", "keep")]
        runs += [Run(d, "probe", "all", 0) for d in VADER_DOMAINS]
        runs += [Run(d, m, "all", s, lr=lr(m)) for s in range(seeds) for d in VADER_DOMAINS for m in TRAINED]
        runs += [Run(d, "eigen-drop", "all", s, init="uniform", lr=lr("eigen-drop")) for s in range(seeds)
                 for d in VADER_DOMAINS]
    if "lowdata" in grids:
        runs += [Run(d, "probe", rows, 0, grid="lowdata") for rows in ("256", "64") for d in VADER_DOMAINS]
        runs += [Run(d, m, rows, s, grid="lowdata", lr=lr(m)) for s in range(seeds) for rows in ("256", "64")
                 for d in VADER_DOMAINS for m in LOWDATA]
    if "ablation" in grids:
        for s in range(seeds):
            runs += [Run("amazon", "eigen-drop", "256", s, k=k, grid="ablation") for k in (2, 4, None)]
            runs += [Run("amazon", "eigen-drop", "256", s, augment=8, grid="ablation"),
                     Run("amazon", "eigen-drop", "256", s, init="uniform", grid="ablation")]
    return runs


# --------------------------------------------------------------------------------------------- ingredients

def sources(held_out: str) -> list:
    """The nine source adapters of the other domains."""
    return [ADAPTERS / f"{d}-{t}" for d in VADER_DOMAINS if d != held_out for t in VADER_TYPES]


_SUBSPACES: dict = {}


def subspace_for(run: Run) -> Subspace:
    """LODO subspace (cached per process); K=None asks for every direction (rank of the centred stack)."""
    mean = "keep" if run.method.endswith("keep") else "drop"
    key = (run.domain, mean, run.k, run.augment)
    if key not in _SUBSPACES:
        k = run.k if run.k is not None else 9 * 8 - 1
        _SUBSPACES[key] = build_subspace(sources(run.domain), components=k, augment=run.augment, mean=mean, seed=0)
    sub = _SUBSPACES[key]
    return random_like(sub, run.seed) if run.method == "random" else sub


def task_for(run: Run) -> Task:
    """The held-out binary task: first `rows` training rows (the split is already seeded-shuffled), val capped;
    quick runs also cap the test split (a smoke test, not a measurement)."""
    full = load_task(f"vader:{run.domain}-binary", seed=0)
    n = len(full.train) if run.rows == "all" else int(run.rows)
    cut = lambda s, k: Split(s.texts[:k], s.targets[:k])  # noqa: E731
    test = cut(full.test, VAL_ROWS) if run.grid == "quick" else full.test
    return replace(full, train=cut(full.train, n), validation=cut(full.validation, VAL_ROWS), test=test)


class PeakRSS:
    """Samples this process's RSS every 20 ms; .peak_mib is the rise above the level at start."""

    def __enter__(self):
        self.start, self.peak, self.stop = self._rss(), 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _watch(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def peak_mib(self) -> float:
        return round(max(0, self.peak - self.start) / 2**20, 1)


# -------------------------------------------------------------------------------------------------- running

def model_for(run: Run, num_labels: int):
    """(model, user-bytes function) for a trained method."""
    if run.method in ("lora", "vera", "head"):
        rank = VERA_RANK if run.method == "vera" else 8
        return baseline_model(default_model_path(), num_labels, run.method, rank=rank, seed=run.seed), None
    sub = subspace_for(run)
    torch.manual_seed(run.seed)
    return coeff_model(None, sub, num_labels, init=run.init, seed=run.seed), sub


def user_bytes(run: Run, net, sub) -> int:
    """Bytes one user costs: user.npz (EigenLoRAx), the PEFT adapter file, or the head weights."""
    with tempfile.TemporaryDirectory() as tmp:
        if sub is not None:
            return write_user(user_coefficients(net, sub, {}), Path(tmp) / "u.npz").stat().st_size
        if run.method == "head":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in getattr(net, head_module(net)).state_dict().items()}, f"{tmp}/h")
            return Path(f"{tmp}/h").stat().st_size
        net.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size


def steps_to_95(history) -> int | None:
    """First evaluated step whose val accuracy reaches 95% of the final one."""
    if not history:
        return None
    final = history[-1][3]
    return next(step for step, _, _, acc in history if acc >= 0.95 * final)


def train_run(run: Run, config: TrainConfig) -> dict:
    """Train one method on the held-out task and measure it."""
    task = task_for(run)
    net, sub = model_for(run, task.num_labels)
    adapter, head = count_params(net, "classifier")
    with PeakRSS() as mem:
        result = fit(net, task, load_tokenizer(default_model_path()), config, progress=False)
    return {"test_accuracy": result.test["accuracy"], "validation_accuracy": result.validation["accuracy"],
            "adapter_params": adapter, "head_params": head,
            "user_bytes": user_bytes(run, net, sub), "s_per_step": result.s_per_step, "steps": result.steps,
            "peak_train_mib": mem.peak_mib, "steps_to_95": steps_to_95(result.history),
            "history": [list(h) for h in result.history]}


def projection_run(run: Run, config: TrainConfig) -> dict:
    """Training-free: the held-out domain's own LoRA projected onto the LODO subspace, with its own head."""
    sub, own = subspace_for(run), ADAPTERS / f"{run.domain}-binary"
    proj = project_adapter(sub, own)
    user = proj.coeffs
    net = apply_user(coeff_model(None, sub, 2), user)
    task = task_for(run)
    test = evaluate(net, encode(task.test, task.kind, load_tokenizer(default_model_path()), config.max_length))
    return {"test_accuracy": test["accuracy"], "relative_error": round(proj.overall, 6), "adapter_params": 0,
            "head_params": 0, "user_bytes": user.nbytes(), "steps": 0}


_FEATURES: dict = {}  # (domain, split) -> (rows, hidden) features of the split's first rows


def _features(domain: str, split: str, texts, max_length: int) -> np.ndarray:
    """Pooled features of `texts`, a prefix of the domain's split (task_for keeps prefixes): computed once for the
    longest prefix asked so far, sliced for shorter ones."""
    have = _FEATURES.get((domain, split))
    if have is None or len(have) < len(texts):
        if "model" not in _FEATURES:
            _FEATURES["model"] = load_encoder(default_model_path())
        _FEATURES[(domain, split)] = have = pooled_features(None, texts, max_length, 128, _FEATURES["model"])
    return have[:len(texts)]


def probe_run(run: Run, config: TrainConfig) -> dict:
    """Head-only as logistic regression on the frozen MiniLM's mean-pooled features (same rows, max length and
    validation rows as the trained methods); features cached per domain in this process."""
    task = task_for(run)
    x = {s: _features(run.domain, s, task.split(s).texts, config.max_length) for s in ("train", "validation", "test")}
    result = fit_features(x["train"], task.train.targets, x["validation"], task.validation.targets, x["test"],
                          task.test.targets)
    hidden = x["train"].shape[1]
    return {"test_accuracy": result["test_accuracy"], "validation_accuracy": result["validation_accuracy"],
            "c": result["c"], "c_grid": result["c_grid"], "probe_grid": result["grid"], "adapter_params": 0,
            "head_params": hidden * 2 + 2, "steps": 0}


def cached(run: Run, out_dir: Path) -> Path | None:
    """The run's file, or a legacy file (no rate in its name) that ran at the rate asked for."""
    path = out_dir / f"{run.key}.json"
    if path.exists():
        return path
    legacy = out_dir / f"{run.legacy_key}.json"
    if run.lr is not None and legacy.exists() and json.loads(legacy.read_text())["config"]["lr"] == run.lr:
        return legacy
    return None


def execute(run: Run, config: TrainConfig, out_dir: Path) -> dict:
    """Run (or reuse the cached result of) one configuration; the JSON is written atomically."""
    path, hit = out_dir / f"{run.key}.json", cached(run, out_dir)
    if hit is not None:
        return json.loads(hit.read_text())
    lr = run.lr if run.lr is not None else LEGACY_LR.get(run.method, config.lr)
    config = replace(config, lr=lr, seed=run.seed)  # recorded as used
    start, cpu = time.perf_counter(), time.process_time()
    if run.method.startswith("projection"):
        measured = projection_run(run, config)
    else:
        measured = probe_run(run, config) if run.method == "probe" else train_run(run, config)
    result = {**asdict(run), **measured, "wall_s": round(time.perf_counter() - start, 2),
              "cpu_s": round(time.process_time() - cpu, 2), "config": asdict(config)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one domain, one seed, 64 rows, a few steps")
    ap.add_argument("--steps", type=int, help="optimizer steps per run (default 80; quick 4)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--grids", default="sweep,main,lowdata", help="comma-separated subset of sweep, main, lowdata, "
                    "ablation; run in this order")
    ap.add_argument("--out", type=Path, help="folder of per-run JSON (default runs/ or runs_quick/)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--methods", help="comma-separated: only these methods' runs (e.g. a second process on other "
                    "methods); main/lowdata need only their picks")
    ap.add_argument("--seed-only", type=int, help="only the runs of this seed (e.g. a second process on seed 2)")
    args = ap.parse_args(argv)
    keep = set(args.methods.split(",")) if args.methods else None

    def only(runs):
        runs = [r for r in runs if r.method in keep] if keep else runs
        return [r for r in runs if r.seed == args.seed_only] if args.seed_only is not None else runs
    torch.set_num_threads(args.threads)
    steps = args.steps or (4 if args.quick else 80)
    config = TrainConfig(batch_size=16, max_length=48, steps=steps, eval_every=max(1, steps // 4), warmup=0.06)
    out_dir = args.out or HERE / ("runs_quick" if args.quick else "runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = tuple(args.grids.split(","))
    if "sweep" in grids and not args.quick:
        _run_all(only(sweep_plan()), config, out_dir)
    picks = None if args.quick else pick_lrs(load_existing(out_dir), SWEEP)
    if picks:
        print(f"picked learning rates: {picks}", file=sys.stderr)
    if keep and picks is not None:  # a method subset needs only its own picks; the others' rows are dropped
        picks = {**{m: LEGACY_LR[m] for m in SWEEP}, **picks} if keep <= set(picks) | {"probe"} else picks
    _run_all(only(plan(args.quick, args.seeds, grids, picks)), config, out_dir)
    return out_dir


def load_existing(out_dir: Path) -> list:
    """Every run file in the folder (the report's view, for the picks)."""
    from report import load_runs

    return load_runs(out_dir)


def _run_all(runs: list, config: TrainConfig, out_dir: Path):
    for i, run in enumerate(runs, 1):
        result = execute(run, config, out_dir)
        print(f"[{i}/{len(runs)}] {run.key}: acc {result['test_accuracy']:.4f} ({result['wall_s']} s)", file=sys.stderr,
              flush=True)


if __name__ == "__main__":
    main()
