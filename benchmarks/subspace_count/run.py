"""How many adapters make a subspace (issue 30): recycled vs random by the number and the family of the sources, on
the MiniLM encoder family in adapters/.

Held-out targets (TARGETS) come from five families; every subspace a target is evaluated on is drawn from the pool
without the target's own adapter. `trec-coarse` and `spam-sms` are the only adapters of their families, so for them
the family is wholly absent from every source set. A draw of N sources is one of three kinds: `same` (the target's
family), `other` (other families only), `mixed` (any adapter but the target's own); seeded, so a cell is the same on
every rerun over the same pool.

Two phases, each cell one JSON file under runs/ (written atomically; a rerun skips finished cells):
- `proj` (training-free, cheap): per target, kind, N and draw, the subspace (K=8, mean kept and dropped) and the
  target's own adapter projected onto it: per-module explained variance 1 − ‖ΔW − ΔŴ‖²/‖ΔW‖², the same for a random
  orthonormal basis of the same K, and (first draw only) the projected adapter's test accuracy (its own head, no training).
- `fit` (trained): eigen-keep / eigen-drop (K=8: 12 modules × 2 × 8 × 8 = 1,536 coefficients per user), random
  (orthonormal, same K), mean (K=1, mean kept: the mean adapter's direction alone), LoRA r=8 (73,728) and the
  closed-form probe, at 64 / 256 / all training rows; every one at the rate the paper table's one validation sweep
  picked (benchmarks/paper_table/report.md), not swept again. VeRA is not run: on q/v of MiniLM its smallest
  per-user vector set (12 × (384 + r)) is above the 1,843-parameter budget.

- `advise`: what `edge-lorax advise` measures for the target's first 64 training rows and the draw's subspace (the
  share of their gradient, `--methods grad`, or of a LoRA trained on them for 100 steps, `--methods quick-lora`, inside
  it vs random bases of the same K), to set it beside the trained gap.

The pool of P adapters is the first P of the family in training order (the fourteen, then train_sources_wide.py's
order), so a cell key (which carries P) names its sources exactly while the family is still growing.

    nice -n 15 .venv/bin/python benchmarks/subspace_count/run.py --phase proj
    nice -n 15 .venv/bin/python benchmarks/subspace_count/run.py --phase fit --rows 64 --ns 2,8,32 --kinds mixed
    .venv/bin/python benchmarks/subspace_count/report.py
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_sources import SOURCE_TASKS, folder_name  # noqa: E402
from train_sources_wide import WIDE_TASKS, balanced  # noqa: E402

from edge_lorax.builder.data import Split, Task, frozen, load_task  # noqa: E402

ADAPTERS = ROOT / "adapters"
PLANNED = [folder_name(s) for s in SOURCE_TASKS + WIDE_TASKS]  # the family's order; draws index into the pool
SPEC = {folder_name(s): s for s in SOURCE_TASKS + WIDE_TASKS}
TARGETS = ("tweets-binary", "amazon-3class", "nyt-binary", "spam-sms", "trec-coarse", "disaster-request",
           "disaster-food", "disaster-earthquake", "20ng-sci.med", "20ng-rec.autos")
KINDS = ("same", "other", "mixed")
NS = (2, 4, 8, 16, 32, 64)
K = 8
LR = {"eigen-keep": 2e-2, "eigen-drop": 5e-2, "random": 5e-2, "mean": 2e-2, "lora": 2e-3, "vera": 3e-2}  # paper table sweep
FIT_METHODS = ("eigen-keep", "random", "mean", "lora", "eigen-drop", "vera")
ADVISE_METHODS = ("grad", "quick-lora")  # advise: the examples' first gradient, or a LoRA trained on them (quick_lora)
# VeRA at EigenLoRAx's per-user budget: its per-module vectors (r + 384) only fit 1,843 on 4 modules: q/v of the last 2 layers
VERA_RANK, VERA_TARGETS = 64, tuple(f"layer.{i}.attention.self.{m}" for i in (4, 5) for m in ("query", "value"))
STEPS, BATCH, MAX_LEN, VAL_ROWS, TEST_ROWS, EVAL_EVERY = 100, 16, 48, 128, 512, 25
# From the plateau study (report: "Steps to plateau"): LoRA r=8 on every TREC row (5,452) reached its best validation
# accuracy (within 1 point) at step 350 of 600, disaster-request (4,000 balanced) at 400 (0.750; best 0.758 at 475);
# at 64 rows every method was there by step 50-75 of 100 (P14 runs)
STEPS_BY_ROWS = {64: 100, 256: 200, 0: 400}


def family(name: str) -> str:
    """sentiment / spam / question / disaster / topic, from the adapter folder name."""
    for prefix, fam in (("spam", "spam"), ("trec", "question"), ("disaster", "disaster"), ("20ng", "topic")):
        if name.startswith(prefix):
            return fam
    return "sentiment"


@dataclass(frozen=True)
class Cell:
    phase: str  # proj | advise | fit
    target: str  # adapter folder name of the held-out target
    kind: str  # same | other | mixed | none (LoRA / probe: no subspace)
    n: int  # sources drawn (0: no subspace)
    draw: int
    method: str  # proj: keep; fit: FIT_METHODS or probe
    seed: int
    rows: int  # training rows (0: all); proj: 0
    pool: int
    steps: int = STEPS  # fit: optimizer steps of batch BATCH

    @property
    def key(self) -> str:
        pool = f"_P{self.pool}" if self.n else ""  # LoRA / probe do not depend on the pool
        steps = f"_t{self.steps}" if self.steps != STEPS and self.phase == "fit" and self.method != "probe" else ""
        return (f"{self.phase}_{self.target}_{self.kind}_N{self.n}_d{self.draw}_{self.method}_s{self.seed}_r{self.rows}"
                f"{pool}{steps}")


def load_pool(size: int | None) -> list[str]:
    """The first `size` adapters of the family's order (PLANNED: the fourteen, then train_sources_wide.py's order, which
    is the order they are trained in), all of which must be finished; None: the longest finished prefix."""
    done = [(ADAPTERS / n / "training.json").is_file() for n in PLANNED]
    finished = done.index(False) if False in done else len(done)
    size = finished if size is None else size
    if size > finished:
        raise SystemExit(f"pool {size}: only the first {finished} adapters of the family are trained; "
                         "run benchmarks/train_sources_wide.py further or ask for a smaller --pool")
    return PLANNED[:size]


def candidates(pool: list, target: str, kind: str) -> list[str]:
    """The pool's adapters a `kind` draw for `target` picks from (never the target's own)."""
    fam = family(target)
    return [p for p in pool if p != target and ((family(p) == fam) == (kind == "same") or kind == "mixed")]


def draw_sources(pool: list, target: str, kind: str, n: int, draw: int) -> list[str] | None:
    """n seeded sources of `kind` for `target` (never the target's own), None when the pool has fewer."""
    cand = candidates(pool, target, kind)
    if len(cand) < n:
        return None
    rng = np.random.default_rng([draw, n, KINDS.index(kind), PLANNED.index(target)])
    return sorted(cand[i] for i in rng.permutation(len(cand))[:n])


def target_task(target: str, rows: int, seed: int = 0) -> Task:
    """The target's task: one-vs-rest families balanced (train as its adapter, validation/test 1:1 so accuracy has a
    50 % floor); `rows` training rows (0: all), VAL_ROWS validation and TEST_ROWS test rows, seeded."""
    task = load_task(SPEC[target], seed=0)
    if target.startswith(("disaster", "20ng")):
        task, _ = balanced(task, seed=0)
        task = replace(task, validation=_balanced_split(task.validation), test=_balanced_split(task.test))
    rng = np.random.default_rng(seed)
    cut = lambda s, k: s if not k or len(s) <= k else _subset(s, np.sort(rng.permutation(len(s))[:k]))  # noqa: E731
    return replace(task, train=cut(task.train, rows), validation=cut(task.validation, VAL_ROWS),
                   test=cut(task.test, TEST_ROWS))


def _balanced_split(split: Split) -> Split:
    y = split.targets
    n = min(int((y == 1).sum()), int((y == 0).sum()))
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in (0, 1)]))
    return _subset(split, keep)


def _subset(split: Split, index) -> Split:
    return Split(tuple(split.texts[i] for i in index), frozen(split.targets[index].copy()))


def _write_json(path: Path, data: dict):
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ measuring

_CACHE: dict = {}


def _tokenizer():
    from edge_lorax.builder.models import default_model_path, load_tokenizer

    if "tok" not in _CACHE:
        _CACHE["tok"] = load_tokenizer(default_model_path())
    return _CACHE["tok"]


def subspace(sources: list, mean: str = "keep", k: int = K):
    from edge_lorax.builder.subspace import build_subspace

    return build_subspace([ADAPTERS / s for s in sources], components=k, mean=mean, seed=0)


def explained(sub, target) -> dict:
    """{module: 1 − relative squared error} of the target's own adapter (or the adapter folder `target`) projected onto
    `sub`, and the overall value."""
    from edge_lorax.builder.project import project_adapter

    proj = project_adapter(sub, target if isinstance(target, Path) else ADAPTERS / target)
    return {"modules": {m: round(1 - e ** 2, 6) for m, e in proj.errors.items()}, "overall": round(1 - proj.overall ** 2, 6)}, proj


def proj_cell(cell: Cell, sources: list) -> dict:
    """Training-free: explained variance (keep, drop, random of the same K) and the projected adapter's accuracy."""
    from edge_lorax.builder.loop import encode, evaluate
    from edge_lorax.builder.subspace import random_like
    from edge_lorax.builder.train import apply_user, coeff_model

    keep = subspace(sources, "keep")
    ev_keep, proj = explained(keep, cell.target)
    ev_drop, _ = explained(subspace(sources, "drop"), cell.target)
    ev_rand, _ = explained(random_like(keep, cell.draw), cell.target)
    out = {"ev_keep": ev_keep, "ev_drop": ev_drop, "ev_random": ev_rand, "test_accuracy": None}
    if cell.draw == 0:  # the forward pass is most of a cell's cost: accuracy of the first draw only
        task = target_task(cell.target, 0)
        net = apply_user(coeff_model(None, keep, task.num_labels), proj.coeffs)
        test = evaluate(net, encode(task.test, task.kind, _tokenizer(), MAX_LEN))
        out.update(test_accuracy=test["accuracy"], test_macro_f1=test["macro_f1"])
    return out


def quick_lora(target: str, seed: int) -> Path:
    """A LoRA r=8 trained on the target's first 64 training rows (100 steps of 16 at the grid's LoRA rate, no
    evaluation passes), saved once per process under a temporary folder: the task direction a user can get in a
    minute."""
    import tempfile

    from edge_lorax.builder.baselines import train_lora
    from edge_lorax.builder.loop import TrainConfig

    if (target, seed) not in _CACHE:
        out = Path(tempfile.mkdtemp(prefix="quick-lora-")) / target
        config = TrainConfig(lr=LR["lora"], batch_size=BATCH, max_length=MAX_LEN, steps=STEPS, seed=seed, eval_every=0)
        train_lora(target_task(target, 64, seed), out, config=config, progress=False)
        _CACHE[(target, seed)] = out
    return _CACHE[(target, seed)]


def advise_cell(cell: Cell, sources: list) -> dict:
    """What `edge-lorax advise` measures, for the target's first 64 training rows and this draw's subspace (K=8, mean
    kept): the share of the examples' gradient (`grad`) or of a quick LoRA's ΔW (`quick-lora`) inside it and inside 8
    random bases of the same K."""
    from edge_lorax.builder.advise import RANDOM_DRAWS, shares, task_gradients
    from edge_lorax.builder.models import default_model_path
    from edge_lorax.builder.subspace import random_like

    sub, task = subspace(sources, "keep"), target_task(cell.target, 64, cell.seed)
    if cell.method == "quick-lora":
        lora = quick_lora(cell.target, cell.seed)
        captured = explained(sub, lora)[0]["overall"]
        randoms = [explained(random_like(sub, i), lora)[0]["overall"] for i in range(RANDOM_DRAWS)]
        return {"captured": captured, "random_mean": float(np.mean(randoms)), "random_max": float(np.max(randoms)),
                "ratio": captured / float(np.mean(randoms)), "test_accuracy": None}
    grads = task_gradients(default_model_path(), sub, task.train.texts, np.asarray(task.train.targets), MAX_LEN)
    captured, _ = shares(sub, grads)
    randoms = [shares(random_like(sub, i), grads)[0] for i in range(RANDOM_DRAWS)]
    return {"captured": captured, "random_mean": float(np.mean(randoms)), "random_max": float(np.max(randoms)),
            "ratio": captured / float(np.mean(randoms)), "test_accuracy": None}


def fit_cell(cell: Cell, sources: list | None) -> dict:
    """One trained run (or the probe) on the target's task at `cell.rows` rows."""
    import torch

    from edge_lorax.builder.baselines import baseline_model, count_params
    from edge_lorax.builder.loop import TrainConfig, fit
    from edge_lorax.builder.models import default_model_path
    from edge_lorax.builder.subspace import random_like
    from edge_lorax.builder.train import coeff_model

    task = target_task(cell.target, cell.rows, cell.seed)
    if cell.method == "probe":
        return probe(task)
    config = TrainConfig(lr=LR[cell.method], batch_size=BATCH, max_length=MAX_LEN, steps=cell.steps, seed=cell.seed,
                         eval_every=EVAL_EVERY)
    if cell.method == "lora":
        net = baseline_model(default_model_path(), task.num_labels, "lora", rank=8, seed=cell.seed)
    elif cell.method == "vera":
        net = baseline_model(default_model_path(), task.num_labels, "vera", rank=VERA_RANK, targets=VERA_TARGETS,
                             seed=cell.seed)
    else:
        mean, k = {"eigen-drop": ("drop", K), "mean": ("keep", 1)}.get(cell.method, ("keep", K))
        sub = subspace(sources, mean, k)  # random: `sources` only lend the shapes (K, module sizes)
        sub = random_like(sub, cell.seed) if cell.method == "random" else sub
        torch.manual_seed(cell.seed)
        net = coeff_model(None, sub, task.num_labels, init="zero_b", seed=cell.seed)
    adapter, head = count_params(net, "classifier")
    r = fit(net, task, _tokenizer(), config, progress=False)
    return {"test_accuracy": r.test["accuracy"], "test_macro_f1": r.test["macro_f1"],
            "validation_accuracy": r.validation["accuracy"], "adapter_params": adapter, "head_params": head,
            "steps": r.steps, "s_per_step": r.s_per_step, "history": [list(h) for h in r.history],
            "config": asdict(config)}


def probe(task: Task) -> dict:
    """Logistic regression on the frozen encoder's mean-pooled features, C picked on the validation rows."""
    from edge_lorax.builder.models import default_model_path
    from edge_lorax.builder.probe import fit_features, load_encoder, pooled_features

    if "enc" not in _CACHE:
        _CACHE["enc"] = load_encoder(default_model_path())
    x = {s: pooled_features(None, task.split(s).texts, MAX_LEN, 128, _CACHE["enc"]) for s in ("train", "validation", "test")}
    r = fit_features(x["train"], task.train.targets, x["validation"], task.validation.targets, x["test"], task.test.targets)
    return {"test_accuracy": r["test_accuracy"], "test_macro_f1": r["test_macro_f1"],
            "validation_accuracy": r["validation_accuracy"], "c": r["c"], "adapter_params": 0, "steps": 0}


def execute(cell: Cell, pool: list, out_dir: Path) -> dict | None:
    """Run (or reuse) one cell; None when its draw is impossible (pool too small)."""
    path = out_dir / f"{cell.key}.json"
    if path.exists():
        return json.loads(path.read_text())
    sources = draw_sources(pool, cell.target, cell.kind, cell.n, cell.draw) if cell.n else None
    if cell.method == "random" and not cell.n:  # the control is the same for every draw: shapes from any two sources
        sources = candidates(pool, cell.target, "mixed")[:2]
    if cell.n and sources is None:
        return None
    start, cpu = time.perf_counter(), time.process_time()
    measured = {"proj": proj_cell, "advise": advise_cell, "fit": fit_cell}[cell.phase](cell, sources)
    result = {**asdict(cell), "task": SPEC[cell.target], "family": family(cell.target), "sources": sources,
              **measured, "wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(time.process_time() - cpu, 2),
              "load_average": [round(x, 2) for x in os.getloadavg()]}
    _write_json(path, result)
    return result


def plan(phase: str, pool: list, targets, kinds, ns, draws: int, seeds: int, rows, methods, steps=None) -> list[Cell]:
    """proj: every (target, kind, N ≤ pool, draw); fit: rows-major, then N, then draws/seeds (cheap, decisive first);
    LoRA, VeRA, the probe and the random basis (seeded by the seed alone, so the same for every draw and N: random_like)
    once per (target, rows, seed); steps: STEPS_BY_ROWS unless given."""
    p, ts = len(pool), [t for t in targets if (ADAPTERS / t / "training.json").is_file()]
    if phase in ("proj", "advise"):
        ms = ["keep"] if phase == "proj" else [m for m in methods if m in ADVISE_METHODS] or ["grad"]
        return [Cell(phase, t, k, _n(n, pool, t, k), d, m, 0, 0, p) for m in ms for d in range(draws) for n in ns
                for t in ts for k in kinds if _n(n, pool, t, k)]
    cells, alone = [], ("probe", "lora", "vera", "random")  # no subspace (random: independent of the draw and N)
    for r in rows:
        st = steps or STEPS_BY_ROWS.get(r, STEPS)
        for s in range(seeds):
            cells += [Cell("fit", t, "none", 0, 0, m, s, r, p, st) for t in ts for m in alone if m in methods]
            cells += [Cell("fit", t, k, _n(n, pool, t, k), d, m, s, r, p, st) for d in range(draws) for n in ns
                      for t in ts for k in kinds for m in methods if m not in alone and _n(n, pool, t, k)]
    return cells


def _n(n: int, pool: list, target: str, kind: str) -> int:
    """N as asked, or (0) every candidate of that kind: the whole pool minus the target for `mixed`."""
    return n or len(candidates(pool, target, kind))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=("proj", "advise", "fit"), default="proj")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--ns", default=",".join(map(str, NS)), help="source counts; 0 = every candidate of the draw kind")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--rows", default="64,256,0", help="training rows per fit cell (0: all)")
    ap.add_argument("--methods", default=",".join(("probe", *FIT_METHODS)))
    ap.add_argument("--pool", type=int, help="pool size P (default: every adapter trained so far, in order)")
    ap.add_argument("--steps", type=int, help="fit: optimizer steps (default: STEPS_BY_ROWS for the rows)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "runs")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pool = load_pool(args.pool)
    ns = [int(n) for n in args.ns.split(",")]
    cells = plan(args.phase, pool, args.targets.split(","), args.kinds.split(","), ns, args.draws, args.seeds,
                 [int(r) for r in args.rows.split(",")], args.methods.split(","), args.steps)
    print(f"pool {len(pool)} adapters; {len(cells)} cells", file=sys.stderr)
    for i, cell in enumerate(cells, 1):
        r = execute(cell, pool, args.out)
        if r is not None:
            acc = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
            print(f"[{i}/{len(cells)}] {cell.key}: acc {acc} ({r['wall_s']} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
