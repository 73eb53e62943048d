"""Leave-one-out on the MiniLM encoder with a wider family than sentiment (issue 12): does recycling carry across
task types?

Two directions, each target's subspace built without that target's own adapter (K=8, mean kept, r=8 on q/v):
- sentiment -> other: targets `spam:sms` and `trec:coarse`, subspace from the twelve VADER source adapters only;
- other -> sentiment: targets `vader:tweets-binary` and `vader:amazon-binary`, subspace from the nine adapters of the
  other three VADER domains plus `spam-sms` and `trec-coarse` (the paper table's subspace for these domains is the
  same nine without the two).

Methods: eigen-keep (EigenLoRAx, the CLI default), LoRA r=8, the random-orthonormal control (same K and machinery),
head-only (trained), the probe (logistic regression on frozen mean-pooled features, C picked on validation), and the
training-free projection of the target's own source adapter (its relative ΔW error says how far that adapter lies
outside the subspace). Training budget, rows, validation rows and learning rates are the paper table's: 80 steps of
batch 16, max length 48, all training rows, 128 validation rows, and the rates picked by its sweep
(`benchmarks/paper_table/report.pick_lrs` over `benchmarks/paper_table/runs/`); this script does not sweep again.
Each run is one JSON file under runs/, so an interrupted run resumes.

    .venv/bin/python benchmarks/encoder_loo/run.py --seeds 3      # after benchmarks/paper_table/run.py --grids sweep
    .venv/bin/python benchmarks/encoder_loo/report.py
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))


def _paper_table():
    """benchmarks/paper_table/run.py as a module (its subspace control, task capping and probe features)."""
    spec = importlib.util.spec_from_file_location("paper_table_run", ROOT / "benchmarks" / "paper_table" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


paper = _paper_table()

from edge_lorax.builder.baselines import baseline_model, count_params  # noqa: E402
from edge_lorax.builder.data import VADER_DOMAINS, VADER_TYPES, Split, load_task  # noqa: E402
from edge_lorax.builder.loop import TrainConfig, encode, evaluate, fit  # noqa: E402
from edge_lorax.builder.models import default_model_path, load_tokenizer  # noqa: E402
from edge_lorax.builder.probe import fit_features  # noqa: E402
from edge_lorax.builder.project import project_adapter  # noqa: E402
from edge_lorax.builder.subspace import build_subspace  # noqa: E402
from edge_lorax.builder.train import apply_user, coeff_model  # noqa: E402

ADAPTERS = ROOT / "adapters"
OTHER = ("spam-sms", "trec-coarse")  # the non-sentiment source adapters (benchmarks/train_sources.py)
TARGETS = {"spam": "spam:sms", "trec": "trec:coarse", "tweets": "vader:tweets-binary", "amazon": "vader:amazon-binary"}
OWN = {"spam": "spam-sms", "trec": "trec-coarse", "tweets": "tweets-binary", "amazon": "amazon-binary"}
TRAINED = ("eigen-keep", "lora", "random", "head")
K = 8


@dataclass(frozen=True)
class Run:
    target: str  # a key of TARGETS
    method: str  # TRAINED, "probe" or "projection-keep"
    seed: int
    lr: float | None = None  # the paper table's pick for trained methods

    @property
    def key(self) -> str:
        return f"{self.target}_{self.method}_s{self.seed}" + ("" if self.lr is None else f"_lr{self.lr:g}")


def sources(target: str) -> list:
    """Sentiment targets: the other domains' nine VADER adapters + spam + TREC; spam/TREC targets: the twelve VADER."""
    if target in VADER_DOMAINS:
        return [ADAPTERS / f"{d}-{t}" for d in VADER_DOMAINS if d != target for t in VADER_TYPES] + [ADAPTERS / o for o in OTHER]
    return [ADAPTERS / f"{d}-{t}" for d in VADER_DOMAINS for t in VADER_TYPES]


def plan(seeds: int, picks: dict | None, targets=tuple(TARGETS)) -> list:
    """Cheap rows first (projection, probe), then the trained methods seed by seed, so a cut-short run has whole seeds;
    only methods whose rate the sweep has picked (none yet: only the cheap rows)."""
    runs = [Run(t, m, 0) for t in targets for m in ("projection-keep", "probe")]
    picks = picks or {}
    return runs + [Run(t, m, s, picks[m]) for s in range(seeds) for t in targets for m in TRAINED if m in picks]


_SUBSPACES: dict = {}


def subspace_for(target: str):
    if target not in _SUBSPACES:
        _SUBSPACES[target] = build_subspace(sources(target), components=K, mean="keep", seed=0)
    return _SUBSPACES[target]


def task_for(target: str, quick: bool = False):
    """The target task: all training rows, the first 128 validation rows (as the paper table); quick caps everything."""
    full = load_task(TARGETS[target], seed=0)
    cut = lambda s, k: Split(s.texts[:k], s.targets[:k])  # noqa: E731
    n_train, n_test = (64, 128) if quick else (len(full.train), len(full.test))
    return replace(full, train=cut(full.train, n_train), validation=cut(full.validation, paper.VAL_ROWS),
                   test=cut(full.test, n_test))


def train_run(run: Run, config: TrainConfig, quick: bool) -> dict:
    task = task_for(run.target, quick)
    if run.method in ("lora", "head"):
        net = baseline_model(default_model_path(), task.num_labels, run.method, rank=8, seed=run.seed)
    else:
        sub = subspace_for(run.target)
        sub = paper.random_like(sub, run.seed) if run.method == "random" else sub
        torch.manual_seed(run.seed)
        net = coeff_model(None, sub, task.num_labels, init="zero_b", seed=run.seed)
    adapter, head = count_params(net, "classifier")
    result = fit(net, task, load_tokenizer(default_model_path()), config, progress=False)
    return {"test_accuracy": result.test["accuracy"], "test_macro_f1": result.test["macro_f1"],
            "validation_accuracy": result.validation["accuracy"], "adapter_params": adapter, "head_params": head,
            "s_per_step": result.s_per_step, "steps": result.steps, "history": [list(h) for h in result.history]}


def probe_run(run: Run, config: TrainConfig, quick: bool) -> dict:
    task = task_for(run.target, quick)
    x = {s: paper._features(run.target, s, task.split(s).texts, config.max_length) for s in ("train", "validation", "test")}
    r = fit_features(x["train"], task.train.targets, x["validation"], task.validation.targets, x["test"], task.test.targets)
    return {"test_accuracy": r["test_accuracy"], "test_macro_f1": r["test_macro_f1"],
            "validation_accuracy": r["validation_accuracy"], "c": r["c"], "probe_grid": r["grid"], "adapter_params": 0,
            "head_params": (x["train"].shape[1] + 1) * task.num_labels, "steps": 0}


def projection_run(run: Run, config: TrainConfig, quick: bool) -> dict:
    """Training-free: the target's own source adapter (with its head) projected onto the subspace built without it."""
    sub = subspace_for(run.target)
    proj = project_adapter(sub, ADAPTERS / OWN[run.target])
    task = task_for(run.target, quick)
    net = apply_user(coeff_model(None, sub, task.num_labels), proj.coeffs)
    test = evaluate(net, encode(task.test, task.kind, load_tokenizer(default_model_path()), config.max_length))
    return {"test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"], "relative_error": round(proj.overall, 6),
            "adapter_params": 0, "head_params": 0, "steps": 0}


def execute(run: Run, config: TrainConfig, out_dir: Path, quick: bool = False) -> dict:
    """Run (or reuse) one configuration; the JSON is written atomically."""
    path = out_dir / f"{run.key}.json"
    if path.exists():
        return json.loads(path.read_text())
    config = replace(config, lr=run.lr or config.lr, seed=run.seed)  # recorded as used
    start, cpu = time.perf_counter(), time.process_time()
    kind = {"probe": probe_run, "projection-keep": projection_run}.get(run.method, train_run)
    measured = kind(run, config, quick)
    result = {**asdict(run), "task": TARGETS[run.target], "sources": [p.name for p in sources(run.target)],
              **measured, "wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(time.process_time() - cpu, 2),
              "config": asdict(config)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ", ".join(TARGETS))
    ap.add_argument("--quick", action="store_true", help="64 training rows, 4 steps, the legacy rates (tests)")
    ap.add_argument("--out", type=Path, help="folder of per-run JSON (default runs/ or runs_quick/)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--paper-runs", type=Path, default=ROOT / "benchmarks" / "paper_table" / "runs",
                    help="the paper table's run folder, whose sweep gives the learning rates")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 4 if args.quick else 80
    config = TrainConfig(batch_size=16, max_length=48, steps=steps, eval_every=max(1, steps // 4), warmup=0.06)
    if args.quick:
        picks = {m: paper.LEGACY_LR[m] for m in TRAINED}
    else:
        from report import load_runs  # the paper table's report (paper_table/ is on sys.path through its run.py)

        picks = {m: lr for m, lr in paper.pick_lrs(load_runs(args.paper_runs), paper.SWEEP).items() if m in TRAINED}
        if not set(TRAINED) <= set(picks):
            print("the paper table's sweep (benchmarks/paper_table/run.py --grids sweep) has no pick yet for "
                  f"{', '.join(m for m in TRAINED if m not in picks)}: those rows wait for a later call", file=sys.stderr)
    print(f"learning rates (paper table sweep picks): {picks}", file=sys.stderr)
    out_dir = args.out or HERE / ("runs_quick" if args.quick else "runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = plan(1 if args.quick else args.seeds, picks, tuple(args.targets.split(",")))
    for i, run in enumerate(runs, 1):
        r = execute(run, config, out_dir, args.quick)
        print(f"[{i}/{len(runs)}] {run.key}: acc {r['test_accuracy']:.4f} macro-F1 {r['test_macro_f1']:.4f} "
              f"({r['wall_s']} s)", file=sys.stderr, flush=True)
    return out_dir


if __name__ == "__main__":
    main()
