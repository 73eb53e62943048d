"""Fit a user on the device from local examples: ONNX Runtime forwards and numpy only, never torch, no gradients.

Zeroth-order optimisation (SPSA, Spall 1992, as MeZO uses it: Malladi et al. 2023) over a bundle's coefficient
inputs, with the task head fitted in closed form (runtime.head) on the graph's `head_input` output:

  start   the bundle's defaults or an initial user; its head fitted on its features ("head only")
  mix     coefficients θ0 + Σ_s w_s (θ_s − θ0) over the bundle's projected sources (sources.npz), w by SPSA
  refine  every coefficient number, θ = θ_mix + σ ⊙ z with σ each tensor's RMS, z by SPSA

SPSA step (two forwards of one minibatch): Δ ~ Rademacher, ĝ = (L(p + εΔ) − L(p − εΔ)) / 2ε · Δ, then an Adam
update of p; the head follows, refitted every few steps on cached features that the perturbed forwards refresh.
Each stage ends in a checkpoint: features of every local example, the head refitted on the fit split, the held-out
split scored. The best checkpoint (start included; accuracy, then held-out loss) is returned with its head refitted
on all local examples, so the user is never worse than its start on the held-out split.
Works on any variant the runtime opens (fp32, int8, .ort) whose graph outputs head_input (classification and
regression bundles exported by this edge-lorax). Does not: run per-example or decoder bundles, change the base model.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.sources import SOURCES_FILE, read_sources
from edge_lorax.formats.tasks import CLASSIFICATION, DataError, Split, Task
from edge_lorax.formats.user import User, split_inputs
from edge_lorax.runtime.bundle import Bundle, BundleError, bundle_file
from edge_lorax.runtime.head import fit_head, head_loss, head_score
from edge_lorax.runtime.infer import encode, run_arrays
from edge_lorax.runtime.users import LoadedUser, load_user, make_user

METHODS = ("head", "mix", "refine")  # each includes the ones before it
MIN_ROWS = 8  # local examples needed to fit and hold some out
REFIT = 10  # SPSA steps between head refits on the feature cache
L2_GRID = (1.0, 10.0, 100.0)  # head penalties tried at each checkpoint, the held-out loss picks (n ≈ 50–200 rows, d = 384)


@dataclass(frozen=True)
class FitConfig:
    """steps: SPSA steps over both stages (None: until budget_s of wall time, setup included, is spent)."""

    method: str = "refine"
    steps: int | None = None
    budget_s: float = 55.0
    batch: int = 16  # examples per SPSA forward
    eps: tuple = (0.05, 0.05)  # perturbation size: mixing weights, refine (in units of each tensor's RMS)
    lr: tuple = (0.05, 0.02)  # Adam step size: mix, refine
    seed: int = 0
    max_length: int = 48


@dataclass
class Result:
    user: User
    report: dict = field(default_factory=dict)


@dataclass
class _Data:
    """Encoded local examples: fit and held-out token arrays with their targets."""

    fit: dict
    y_fit: np.ndarray
    held: dict
    y_held: np.ndarray


# ------------------------------------------------------------------------------------------------- checks

def check_bundle(bundle: Bundle, task: Task):
    """A shared classification/regression graph with a head_input output and a head as wide as the task's labels."""
    if names.HEAD_INPUT not in bundle.outputs or names.HEAD_BIAS not in bundle.coeff_inputs:
        raise BundleError(f"{bundle.model_path}: no {names.HEAD_INPUT} output or head inputs, so no head can be fitted "
                          "on device; export a classification or regression bundle with this edge-lorax")
    if bundle.per_example:
        raise BundleError(f"{bundle.model_path}: a per-example graph; personalize on the bundle's fp32 or int8 model")
    width = bundle.coeff_inputs[names.HEAD_BIAS].shape[-1]
    if width != task.num_labels:
        fix = f"--num-labels {task.num_labels}" if task.kind == CLASSIFICATION else "--task regression"
        raise InputError(f"{task.name}: {task.num_labels} {'classes' if task.kind == CLASSIFICATION else 'target'}, but "
                         f"{bundle.path}'s head has {width} outputs; export a bundle with {fix}")


def check_task(task: Task, path):
    """Enough rows on both sides of the split and, for classification, two classes to tell apart."""
    if len(task.train) + len(task.validation) < MIN_ROWS:
        raise DataError(f"{path}: {len(task.train) + len(task.validation)} examples; personalize needs at least "
                        f"{MIN_ROWS} (some are held out to check the fit)")
    if task.kind == CLASSIFICATION and len(task.labels) < 2:
        raise DataError(f"{path}: every example has label {task.labels[0]!r}; a classifier needs two classes or more")
    if task.kind == CLASSIFICATION and len(np.unique(task.train.targets)) < 2:
        raise DataError(f"{path}: the fit split holds one class only; add examples of the other classes")


# ------------------------------------------------------------------------------------------------ forwards

def _rows(tokens: dict, index) -> dict:
    """A minibatch of encoded rows, trimmed to its longest example."""
    sub = {k: v[index] for k, v in tokens.items()}
    width = int(sub[names.ATTENTION_MASK].sum(axis=1).max())
    return {k: np.ascontiguousarray(v[:, :width]) for k, v in sub.items()}


def _features(bundle: Bundle, coeffs: dict, tokens: dict, chunk: int = 32) -> np.ndarray:
    """head_input (n, in) of every row for the coefficients `coeffs` (the graph's default head: it is not read)."""
    user = make_user(bundle, coeffs, "candidate")
    n = len(tokens[names.INPUT_IDS])
    parts = [run_arrays(bundle, user, _rows(tokens, np.arange(i, min(i + chunk, n))), [names.HEAD_INPUT])[names.HEAD_INPUT]
             for i in range(0, n, chunk)]
    return np.concatenate(parts).astype(np.float64)


def _encode_split(bundle: Bundle, split: Split, max_length: int) -> dict:
    return encode(bundle, list(split.texts), max_length)


# ---------------------------------------------------------------------------------------- parameterisations

def _mixer(start: dict, sources: dict):
    """(S, w0, p (S,) -> coefficients θ0 + Σ_s (w0 + p_s)(θ_s − θ0)), w0 = 1/S from an all-zero start (ΔW is bilinear
    in the coefficients: at zero, central differences see nothing), else 0."""
    diffs = {k: np.stack([src[k] - start[k] for src in sources.values()]) for k in start}  # (S, ...)
    w0 = 1.0 / len(sources) if not any(v.any() for v in start.values()) else 0.0
    return len(sources), w0, lambda p: {k: (start[k] + np.tensordot(w0 + p, d, 1)).astype(np.float32)
                                        for k, d in diffs.items()}


def _refiner(start: dict):
    """(P, 0, p (P,) -> coefficients θ0 + σ ⊙ p), σ each tensor's RMS (at least 1e-3): one step size fits every tensor."""
    keys = sorted(start)
    sizes = [start[k].size for k in keys]
    sigma = np.concatenate([np.full(n, max(float(np.sqrt(np.mean(start[k] ** 2))), 1e-3)) for k, n in zip(keys, sizes)])
    cuts = np.cumsum(sizes)[:-1]

    def coeffs(p):
        parts = np.split(sigma * p, cuts)
        return {k: (start[k] + d.reshape(start[k].shape)).astype(np.float32) for k, d in zip(keys, parts)}

    return int(sum(sizes)), 0.0, coeffs


# ------------------------------------------------------------------------------------------------ the loop

class _Fitter:
    """The state of one fit: the bundle, the data, the current head, the clock and the checkpoints."""

    def __init__(self, bundle: Bundle, task: Task, data: _Data, config: FitConfig, progress, t0: float):
        self.bundle, self.task, self.data, self.config, self.progress = bundle, task, data, config, progress
        self.rng = np.random.default_rng(config.seed)
        self.t0, self.steps, self.rows_run, self.checkpoints = t0, 0, 0, []
        self.labels = task.num_labels

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def checkpoint(self, stage: str, coeffs: dict) -> dict:
        """Features of every local example, head fitted on the fit split, held-out score and loss."""
        kind, d = self.task.kind, self.data
        x_fit, x_held = _features(self.bundle, coeffs, d.fit), _features(self.bundle, coeffs, d.held)
        self.rows_run += len(x_fit) + len(x_held)
        heads = {l2: fit_head(x_fit, d.y_fit, kind, self.labels, l2) for l2 in L2_GRID}
        l2 = min(L2_GRID, key=lambda a: head_loss(x_held, d.y_held, heads[a], kind))
        head = heads[l2]
        point = {"stage": stage, "coeffs": coeffs, "head": head, "l2": l2, "x": (x_fit, x_held), "steps": self.steps,
                 "seconds": round(self.elapsed(), 2), "heldout_score": head_score(x_held, d.y_held, head, kind),
                 "heldout_loss": head_loss(x_held, d.y_held, head, kind),
                 "fit_loss": head_loss(x_fit, d.y_fit, head, kind)}
        self.checkpoints.append(point)
        self.progress(f"{stage}: step {self.steps}, {point['seconds']} s, held-out {_score_name(kind)} "
                      f"{abs(point['heldout_score']):.3f}, loss {point['heldout_loss']:.4f}")
        return point

    def _forward(self, coeffs: dict, index) -> np.ndarray:
        """head_input (len(index), in) of some fit rows."""
        self.rows_run += len(index)
        return _features(self.bundle, coeffs, {k: v[index] for k, v in self.data.fit.items()})

    def _batches(self):
        """Minibatches of fit rows, a fresh seeded permutation per epoch: every row is seen once an epoch."""
        n, batch = len(self.data.y_fit), min(self.config.batch, len(self.data.y_fit))
        while True:
            order = self.rng.permutation(n)
            for i in range(0, n - batch + 1, batch):
                yield order[i:i + batch]

    def spsa(self, stage: str, size: int, to_coeffs, point: dict, steps: int | None, deadline: float, eps: float,
             lr: float) -> np.ndarray:
        """SPSA with Adam over p (size,), from 0, for `steps` or until `deadline` (seconds since start). The head
        follows the features: the two perturbed forwards average to the minibatch's features at p (to first order),
        which refresh a cache of every fit row's features; the head is refitted on that cache every REFIT steps (or less
        often when a refit costs more than a quarter of the time between refits)."""
        kind, y = self.task.kind, self.data.y_fit
        p, m, v, t, per_step = np.zeros(size), np.zeros(size), np.zeros(size), 0, 0.0
        cache, head, batches = point["x"][0].copy(), point["head"], self._batches()
        refit_at, refit_cost = 0.0, 0.0  # a refit waits until 4x its own cost has passed (many classes: slow Newton)
        while (steps is None or t < steps) and self.elapsed() + per_step < deadline:
            tick, index = time.perf_counter(), next(batches)
            delta = self.rng.choice((-1.0, 1.0), size)
            x_plus, x_minus = self._forward(to_coeffs(p + eps * delta), index), self._forward(to_coeffs(p - eps * delta), index)
            diff = head_loss(x_plus, y[index], head, kind) - head_loss(x_minus, y[index], head, kind)
            g = diff / (2 * eps) * delta
            t, self.steps = t + 1, self.steps + 1
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            p = p - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
            cache[index] = (x_plus + x_minus) / 2
            if t % REFIT == 0 and self.elapsed() - refit_at >= 4 * refit_cost:
                refit_at = self.elapsed()
                head = fit_head(cache, y, kind, self.labels, point["l2"])
                refit_cost = self.elapsed() - refit_at
            per_step = time.perf_counter() - tick
            if t % 20 == 0:
                self.progress(f"{stage}: step {self.steps}, {self.elapsed():.1f} s")
        return p


def _score_name(kind: str) -> str:
    return "accuracy" if kind == CLASSIFICATION else "MSE"


def _better(a: dict, b: dict) -> bool:
    return (a["heldout_score"], -a["heldout_loss"]) > (b["heldout_score"], -b["heldout_loss"])


def load_sources(bundle: Bundle) -> dict:
    """The bundle's projected sources ({name: coefficients}), {} when it ships none."""
    path = bundle_file(bundle.path, SOURCES_FILE)
    if path is None:
        return {}
    shapes = {k: s.shape for k, s in bundle.coeff_inputs.items() if not k.startswith(names.HEAD_PREFIX)}
    return read_sources(path, bundle.fingerprint, shapes)


def _stage_deadlines(config: FitConfig, fitter: _Fitter, stages: list, checkpoint_s: float) -> list:
    """Each SPSA stage's deadline (seconds since start): the budget left after the start, shared equally, minus
    one checkpoint per stage."""
    left = config.budget_s - fitter.elapsed()
    share = left / max(len(stages), 1)
    return [fitter.elapsed() + share * (i + 1) - checkpoint_s for i in range(len(stages))]


def personalize(bundle: Bundle, task: Task, start: LoadedUser | None = None, config: FitConfig = FitConfig(),
                progress=lambda msg: None, t0: float | None = None) -> Result:
    """Fit a user for `task` (its train split fits, its validation split is held out) on `bundle`, from `start` (None:
    the bundle's defaults); returns the user (this bundle's fingerprint, the task's labels) and a report."""
    if config.method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {config.method!r}")
    check_bundle(bundle, task)
    t0 = time.perf_counter() if t0 is None else t0
    data = _Data(_encode_split(bundle, task.train, config.max_length), np.asarray(task.train.targets),
                 _encode_split(bundle, task.validation, config.max_length), np.asarray(task.validation.targets))
    fitter = _Fitter(bundle, task, data, config, progress, t0)
    coeffs0 = _start_coeffs(bundle, start)
    tick = time.perf_counter()
    best = first = fitter.checkpoint("start", coeffs0)
    checkpoint_s = time.perf_counter() - tick
    sources = load_sources(bundle) if config.method != "head" else {}
    stages = (["mix"] if sources else []) + (["refine"] if config.method == "refine" else [])
    if config.method == "mix" and not sources:
        raise BundleError(f"{bundle.path}: ships no {SOURCES_FILE} to mix; use --method refine or head, or build the "
                          "subspace with --sources and re-export")
    deadlines = _stage_deadlines(config, fitter, stages, checkpoint_s)
    step_share = None if config.steps is None else [config.steps // len(stages) + (i < config.steps % len(stages))
                                                    for i in range(len(stages))] if stages else []
    current = coeffs0
    for i, stage in enumerate(stages):
        size, w0, to_coeffs = _mixer(current, sources) if stage == "mix" else _refiner(current)
        j = 0 if stage == "mix" else 1
        p = fitter.spsa(stage, size, to_coeffs, best, None if step_share is None else step_share[i],
                        deadlines[i], config.eps[j], config.lr[j])
        point = fitter.checkpoint(stage, to_coeffs(p))
        if stage == "mix":
            point["weights"] = dict(zip(sources, (round(float(w0 + w), 4) for w in p)))
        if _better(point, best):
            best, current = point, point["coeffs"]
    return Result(_final_user(bundle, task, best), _report(fitter, first, best, stages))


def _start_coeffs(bundle: Bundle, start: LoadedUser | None) -> dict:
    """The starting coefficients: the user's, else the bundle's defaults (its .onnx_adapter, which holds the graph's
    defaults, or zeros for a bundle exported without --coeffs)."""
    if start is None:
        adapter = (bundle.manifest.get("files") or {}).get("adapter")
        path = bundle_file(bundle.path, adapter) if isinstance(adapter, str) else None
        start = load_user(bundle, path) if path is not None else None
    if start is not None:
        return split_inputs(dict(start.arrays))[0]
    return {k: np.zeros(s.shape, np.float32) for k, s in bundle.coeff_inputs.items() if not k.startswith(names.HEAD_PREFIX)}


def _final_user(bundle: Bundle, task: Task, best: dict) -> User:
    """The best checkpoint's coefficients with a head refitted on every local example."""
    x = np.concatenate(best["x"])
    y = np.concatenate([np.asarray(task.train.targets), np.asarray(task.validation.targets)])
    head = fit_head(x, y, task.kind, task.num_labels, best["l2"])
    meta = {"method": f"personalize:{best['stage']}", "labels": list(task.labels) if task.labels else None,
            "base_model": bundle.manifest.get("base_model")}
    return User(bundle.fingerprint, dict(best["coeffs"]), head, {k: v for k, v in meta.items() if v is not None})


def _report(fitter: _Fitter, first: dict, best: dict, stages: list) -> dict:
    keep = ("stage", "steps", "seconds", "heldout_score", "heldout_loss", "fit_loss", "l2", "weights")
    return {"stages": ["start", *stages], "checkpoints": [{k: c[k] for k in keep if k in c} for c in fitter.checkpoints],
            "chosen": best["stage"], "start_heldout": first["heldout_score"], "heldout": best["heldout_score"],
            "score": _score_name(fitter.task.kind), "steps": fitter.steps, "rows_run": fitter.rows_run,
            "fit_rows": len(fitter.data.y_fit), "heldout_rows": len(fitter.data.y_held),
            "seconds": round(fitter.elapsed(), 2)}
