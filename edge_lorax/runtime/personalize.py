"""Fit a user on the device from local examples: ONNX Runtime forwards and numpy only, never torch, no gradients.

Zeroth-order optimisation (SPSA, Spall 1992, as MeZO uses it: Malladi et al. 2023) over a bundle's coefficient
inputs, with the task head fitted in closed form (runtime.head) on the graph's `head_input` output:

  start   the bundle's defaults or an initial user; its head fitted on its features ("head only")
  mix     coefficients θ0 + Σ_s w_s (θ_s − θ0) over the bundle's projected sources (sources.npz), w by SPSA
  refine  every coefficient number, θ = θ_mix + σ ⊙ z with σ each tensor's RMS, z by SPSA
  exact   every coefficient and head number by Adam on exact gradients: the bundle's gradient graph
          (model.grad.onnx, export/gradient.py; loss and d loss / d every feed), run by plain ONNX Runtime, with the
          host trainer's schedule (builder.loop: linear warm-up over 6 % of the steps, then linear decay to 0)

SPSA step (two forwards of one minibatch): Δ ~ Rademacher, ĝ = (L(p + εΔ) − L(p − εΔ)) / 2ε · Δ, then an Adam
update of p; the head follows, refitted every few steps on cached features that the perturbed forwards refresh.
Each stage ends in a checkpoint: features of every local example, the head refitted on the fit split, the held-out
split scored. The best checkpoint (start included; accuracy, then held-out loss) is returned with its head refitted
on all local examples, so the user is never worse than its start on the held-out split. An exact-gradient fit is
kept as host training is (no choice among noisy checkpoints) unless it is worse than the start on the held-out split
(accuracy, then loss: held-out loss alone rejected trained features whose refitted head was merely overconfident).
Gradient descent starts its head as the host trainer does (small random weights, zero bias), not from the head fitted
in closed form, which already separates the fit rows and left the coefficients little to learn but overfitting.
Works on any variant the runtime opens (fp32, int8, .ort) whose graph outputs head_input (classification and
regression bundles exported by this edge-lorax). Does not: run per-example or decoder bundles, change the base model.

Front door: `personalize_file` (a bundle folder, a data file and the user file to write: what `edge-lorax
personalize` calls); `personalize` fits an opened bundle on a task already read.
"""

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.atomic import check_output
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.sources import SOURCES_FILE, read_sources
from edge_lorax.formats.tasks import CLASSIFICATION, DataError, Split, Task, frozen, read_task, target_dtype
from edge_lorax.formats.user import User, split_inputs, write_user
from edge_lorax.runtime.bundle import Bundle, BundleError, SessionConfig, bundle_file, open_bundle
from edge_lorax.runtime.head import fit_head, head_loss, head_score
from edge_lorax.runtime.infer import check_max_length, encode, per_example_refusal, run_arrays
from edge_lorax.runtime.users import LoadedUser, load_user, make_user

METHODS = ("head", "mix", "refine", "exact")  # mix includes head; refine and exact start from the mix
AUTO = "auto"  # exact when the bundle ships a gradient graph, else refine
STAGE_WEIGHT = {"mix": 1, "refine": 1, "exact": 2}  # shares of the budget (the mix plateaus within ~15 s)
WARMUP = 0.06  # the host trainer's warm-up fraction (builder.loop.TrainConfig.warmup)
MIN_ROWS = 8  # local examples needed to fit and hold some out
REFIT = 10  # SPSA steps between head refits on the feature cache
HEAD_INIT_STD = 0.02  # the exact stage's starting head weights: the host trainer's (transformers' initializer_range)
L2_GRID = (1.0, 10.0, 100.0)  # head penalties tried at each checkpoint, the held-out loss picks (n ≈ 50–200 rows, d = 384)
CHECKPOINT_SHARE = 0.08  # of the budget left, what featurising every example used (one checkpoint) may cost
PROBE_ROWS = 128  # examples timed (features and heads) to size that share
MIN_SAMPLE = 256  # examples a budget never cuts below


@dataclass(frozen=True)
class FitConfig:
    """steps: optimizer steps over all stages, exactly, whatever the time (None: until budget_s of wall time, setup
    included, is spent). Only a budget makes a fit depend on the machine's speed; a given steps count is reproducible
    bit for bit. max_rows: examples used at most (fit + held out; a seeded sample of a larger file, every class
    kept), since each checkpoint featurises all of them; against a budget also no more than one checkpoint can
    featurise in CHECKPOINT_SHARE of it, timed on PROBE_ROWS examples. A file of at most max_rows examples fitted
    for a given steps count gives the same user whatever its size elsewhere."""

    method: str = AUTO
    steps: int | None = None
    budget_s: float = 55.0
    batch: int = 16  # examples per SPSA forward
    eps: tuple = (0.05, 0.05)  # perturbation size: mixing weights, refine (in units of each tensor's RMS)
    lr: tuple = (0.05, 0.02)  # Adam step size: mix, refine
    exact_lr: float = 2e-2  # Adam peak step size on exact gradients (the host trainer's EigenLoRAx rate)
    seed: int = 0
    max_length: int = 48
    max_rows: int = 4096


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

def check_bundle(bundle: Bundle, task: Task, source=None):
    """A shared classification/regression graph with a head_input output and a head as wide as the task's labels;
    `source` (the task's file) is named in the refusal, else the task's name."""
    if names.HEAD_INPUT not in bundle.outputs or names.HEAD_BIAS not in bundle.coeff_inputs:
        raise BundleError(f"{bundle.model_path}: no {names.HEAD_INPUT} output or head inputs, so no head can be fitted "
                          "on device; export a classification or regression bundle with this edge-lorax")
    if bundle.per_example:
        raise BundleError(per_example_refusal(bundle, "fit one user (personalize)"))
    width = bundle.coeff_inputs[names.HEAD_BIAS].shape[-1]
    if width != task.num_labels:
        fix = f"--num-labels {task.num_labels}" if task.kind == CLASSIFICATION else "--task regression"
        found = "1 target" if task.kind != CLASSIFICATION else f"{task.num_labels} classes ({_listed(task.labels)})"
        raise InputError(f"{source or task.name}: {found}, but {bundle.path}'s head has {width} outputs; export a "
                         f"bundle with {fix}")


def _listed(labels, n: int = 6) -> str:
    """The first few class names, quoted and cut short, with how many more."""
    shown = ", ".join(repr(x) if len(repr(x)) <= 30 else repr(x)[:26] + "...'" for x in labels[:n])
    return shown + (f", ... {len(labels) - n} more" if len(labels) > n else "")


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


# ------------------------------------------------------------------------------------------- bounded work

def _row_budget(bundle: Bundle, task: Task, coeffs: dict, config: FitConfig, t0: float) -> int:
    """Examples a fit may use: config.max_rows, and against a budget (no --steps) what one checkpoint (features of
    every example, a head per L2_GRID penalty) costs in CHECKPOINT_SHARE of the time left, at the rate timed on
    PROBE_ROWS fit examples (never below MIN_SAMPLE; the rate includes fixed costs, so it errs on the safe side)."""
    if config.steps is not None or len(task.train) + len(task.validation) <= min(MIN_SAMPLE, config.max_rows):
        return config.max_rows
    tick, n = time.perf_counter(), min(PROBE_ROWS, len(task.train))
    x = _features(bundle, coeffs, encode(bundle, list(task.train.texts[:n]), config.max_length))
    for l2 in L2_GRID:
        fit_head(x, np.asarray(task.train.targets[:n]), task.kind, task.num_labels, l2)
    per_row = (time.perf_counter() - tick) / n
    left = config.budget_s - (time.perf_counter() - t0)
    return min(config.max_rows, max(MIN_SAMPLE, int(CHECKPOINT_SHARE * left / max(per_row, 1e-9))))


def _sample(split: Split, k: int, rng, kind: str) -> Split:
    """k rows of a split (seeded, kept in their order); for classification every class of the split keeps a row."""
    if len(split) <= k:
        return split
    targets, order = np.asarray(split.targets), rng.permutation(len(split))
    pick = order[:k]
    if kind == CLASSIFICATION:
        missing = np.setdiff1d(np.unique(targets), targets[pick])
        pick = np.concatenate([pick, [order[np.argmax(targets[order] == c)] for c in missing]]).astype(np.int64)
    pick = np.sort(pick)
    return Split(tuple(split.texts[i] for i in pick), frozen(targets[pick].copy()))


def _within(bundle: Bundle, task: Task, coeffs: dict, config: FitConfig, progress, t0: float) -> Task:
    """The task cut to the examples a fit may use (_row_budget), fit and held-out in proportion; said when cut."""
    n_fit, n_held = len(task.train), len(task.validation)
    rows = _row_budget(bundle, task, coeffs, config, t0)
    if n_fit + n_held <= rows:
        return task
    k_held = max(1, round(rows * n_held / (n_fit + n_held))) if n_held else 0
    rng = np.random.default_rng([config.seed, 25])
    used = replace(task, train=_sample(task.train, rows - k_held, rng, task.kind),
                   validation=_sample(task.validation, k_held, rng, task.kind))
    progress(f"using {len(used.train)} fit + {len(used.validation)} held-out examples of {n_fit + n_held} (a seeded "
             f"sample: each checkpoint featurises every example used; at most {rows} here, max_rows {config.max_rows})")
    return used


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

    def checkpoint(self, stage: str, coeffs: dict, trained_head: dict | None = None) -> dict:
        """Features of every local example, head fitted on the fit split (or `trained_head` when its held-out loss
        is lower: l2 None), held-out score and loss."""
        kind, d = self.task.kind, self.data
        x_fit, x_held = _features(self.bundle, coeffs, d.fit), _features(self.bundle, coeffs, d.held)
        self.rows_run += len(x_fit) + len(x_held)
        heads = {l2: fit_head(x_fit, d.y_fit, kind, self.labels, l2) for l2 in L2_GRID}
        if trained_head is not None:
            heads[None] = trained_head
        l2 = min(heads, key=lambda a: head_loss(x_held, d.y_held, heads[a], kind))
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
        which refresh a cache of every fit row's features; the head is refitted on that cache every REFIT steps (against a
        deadline alone: less often when a refit costs more than a quarter of the time between refits)."""
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
            if t % REFIT == 0 and (steps is not None or self.elapsed() - refit_at >= 4 * refit_cost):
                refit_at = self.elapsed()
                head = fit_head(cache, y, kind, self.labels, point["l2"])
                refit_cost = self.elapsed() - refit_at
            per_step = time.perf_counter() - tick
            if t % 20 == 0:
                self.progress(f"{stage}: step {self.steps}, {self.elapsed():.1f} s")
        return p


    def descend(self, sess, coeffs: dict, head: dict, steps: int | None, deadline: float) -> tuple:
        """Adam (the host trainer's AdamW at weight decay 0) on every coefficient and head number with the gradient
        graph's exact gradients, minibatches of fit rows, warm-up then linear decay over the planned steps (`steps`,
        else as many as fit before `deadline`, estimated from the first step); returns (coefficients, head)."""
        params = {k: np.array(v, np.float32) for k, v in {**coeffs, **head}.items()}
        m, v = ({k: np.zeros_like(a) for k, a in params.items()} for _ in range(2))
        y, outs = self.data.y_fit.astype(target_dtype(self.task.kind)), [o.name for o in sess.get_outputs()]
        t, planned, per_step, batches = 0, steps, 0.0, self._batches()
        while (planned is None or t < planned) and self.elapsed() + per_step < deadline:
            tick, index = time.perf_counter(), next(batches)
            got = dict(zip(outs, sess.run(None, {**_rows(self.data.fit, index), names.LABELS: y[index], **params})))
            t, self.steps, self.rows_run = t + 1, self.steps + 1, self.rows_run + 3 * len(index)  # backward ≈ 2 forwards
            per_step = time.perf_counter() - tick
            if planned is None:
                planned = t + max(0, int((deadline - self.elapsed()) / per_step))
            rate = self.config.exact_lr * _schedule(t - 1, planned)
            for k, a in params.items():
                g = got[names.GRAD_PREFIX + k]
                m[k], v[k] = 0.9 * m[k] + 0.1 * g, 0.999 * v[k] + 0.001 * g * g
                a -= (rate * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)).astype(np.float32)
            if t % 20 == 0:
                self.progress(f"exact: step {self.steps}, {self.elapsed():.1f} s, loss {float(got[names.LOSS]):.4f}")
        return split_inputs(params)


def _schedule(step: int, total: int) -> float:
    """The host trainer's rate factor (builder.loop.schedule): linear warm-up over WARMUP of `total`, then decay."""
    warm = max(1, int(WARMUP * total))
    return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


def _exact_head(head: dict, rng) -> dict:
    """The head gradient descent starts from: the host trainer's initialisation (weights ~ N(0, HEAD_INIT_STD²), bias
    0; transformers' initializer_range), whatever head the checkpoint before fitted. From the closed-form head, which
    already separates the fit rows, descent overfitted: on held-out tasks the exact stage reached a few points less
    test accuracy than from this start (issue 25, cause 7; benchmarks/personalize/robust.md)."""
    return {k: (rng.standard_normal(v.shape) * HEAD_INIT_STD).astype(np.float32) if k == names.HEAD_WEIGHT_T
            else np.zeros_like(v, dtype=np.float32) for k, v in head.items()}


def _keep_exact(point: dict, first: dict) -> bool:
    """The exact stage is kept as host training is, unless it is worse than the start on the held-out split (accuracy,
    then loss). Not by held-out loss alone: a fit that classifies more held-out rows right can still have a higher loss
    when its refitted head is overconfident (nyt seed 2: held-out accuracy 0.61 -> 0.71, loss 0.687 -> 0.774,
    rejected for a mix 3 points worse on test)."""
    return not _better(first, point)


def _exact_start(coeffs: dict, rng) -> dict:
    """The coefficients gradient descent starts from: as given, or from an all-zero start the host trainer's
    "zero_b" initialisation (coeff_A ~ U(-0.5, 0.5), coeff_B = 0: ΔW is bilinear, so at zero every gradient is 0)."""
    if any(v.any() for v in coeffs.values()):
        return coeffs
    return {k: (rng.random(v.shape) - 0.5).astype(np.float32) if k.endswith("." + names.COEFF_A) else v
            for k, v in coeffs.items()}


def gradient_session(bundle: Bundle):
    """An ONNX Runtime session on the bundle's gradient graph (manifest files.gradient), None when it ships none."""
    import onnxruntime as ort

    from edge_lorax.runtime.bundle import session_options

    name = (bundle.manifest.get("files") or {}).get("gradient")
    path = bundle_file(bundle.path, name) if isinstance(name, str) else None
    if path is None:
        return None
    return ort.InferenceSession(str(path), session_options(replace(bundle.config, variant="fp32")),
                                providers=["CPUExecutionProvider"])


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
    """Each stage's deadline (seconds since start): the budget left after the start, shared by STAGE_WEIGHT, minus
    one checkpoint per stage; none (inf) when config.steps is set."""
    if config.steps is not None:
        return [float("inf")] * len(stages)
    left, now = config.budget_s - fitter.elapsed(), fitter.elapsed()
    weights = np.cumsum([STAGE_WEIGHT[s] for s in stages]) / max(sum(STAGE_WEIGHT[s] for s in stages), 1)
    return [now + left * w - checkpoint_s for w in weights]


def personalize(bundle: Bundle, task: Task, start: LoadedUser | None = None, config: FitConfig = FitConfig(),
                progress=lambda msg: None, t0: float | None = None) -> Result:
    """Fit a user for `task` (its train split fits, its validation split is held out) on `bundle`, from `start` (None:
    the bundle's defaults); returns the user (this bundle's fingerprint, the task's labels) and a report. A task
    larger than the fit may use (FitConfig.max_rows, the budget) is sampled first, before any example is encoded."""
    if config.method not in (AUTO, *METHODS):
        raise InputError(f"method must be one of {(AUTO, *METHODS)}, got {config.method!r}")
    check_bundle(bundle, task)
    t0 = time.perf_counter() if t0 is None else t0
    coeffs0, read = _start_coeffs(bundle, start), len(task.train) + len(task.validation)
    task = _within(bundle, task, coeffs0, config, progress, t0)
    data = _Data(_encode_split(bundle, task.train, config.max_length), np.asarray(task.train.targets),
                 _encode_split(bundle, task.validation, config.max_length), np.asarray(task.validation.targets))
    fitter = _Fitter(bundle, task, data, config, progress, t0)
    tick = time.perf_counter()
    best = first = fitter.checkpoint("start", coeffs0)
    checkpoint_s = time.perf_counter() - tick
    sess = gradient_session(bundle) if config.method in (AUTO, "exact") else None
    method = ("exact" if sess is not None else "refine") if config.method == AUTO else config.method
    if method == "exact" and sess is None:
        raise BundleError(f"{bundle.path}: ships no gradient graph ({names.BUNDLE_MODEL_GRADIENT}); re-export it with "
                          "this edge-lorax (export writes it by default) or use --method refine")
    sources = load_sources(bundle) if method != "head" else {}
    stages = (["mix"] if sources else []) + ([method] if method in ("refine", "exact") else [])
    if method == "mix" and not sources:
        raise BundleError(f"{bundle.path}: ships no {SOURCES_FILE} to mix; use --method refine or head, or build the "
                          "subspace with --sources and re-export")
    deadlines = _stage_deadlines(config, fitter, stages, checkpoint_s)
    step_share = None if config.steps is None else [config.steps // len(stages) + (i < config.steps % len(stages))
                                                    for i in range(len(stages))] if stages else []
    current = coeffs0
    for i, stage in enumerate(stages):
        if stage == "exact":
            coeffs, head = fitter.descend(sess, _exact_start(current, fitter.rng), _exact_head(best["head"], fitter.rng),
                                          None if step_share is None else step_share[i], deadlines[i])
            point = fitter.checkpoint(stage, coeffs, head)
            if _keep_exact(point, first):  # trusted as host training is, unless worse than the start
                best, current = point, coeffs
            continue
        size, w0, to_coeffs = _mixer(current, sources) if stage == "mix" else _refiner(current)
        j = 0 if stage == "mix" else 1
        p = fitter.spsa(stage, size, to_coeffs, best, None if step_share is None else step_share[i],
                        deadlines[i], config.eps[j], config.lr[j])
        point = fitter.checkpoint(stage, to_coeffs(p))
        if stage == "mix":
            point["weights"] = dict(zip(sources, (round(float(w0 + w), 4) for w in p)))
        if _better(point, best):
            best, current = point, point["coeffs"]
    return Result(_final_user(bundle, task, best), {**_report(fitter, first, best, stages), "examples_read": read})


def personalize_file(bundle_path, data_path, out, *, init=None, text_column: str = "text", label_column: str = "label",
                     kind: str = CLASSIFICATION, holdout: float = 0.2, config: FitConfig = FitConfig(),
                     session: SessionConfig = SessionConfig(), overwrite: bool = False, progress=None) -> Result:
    """One-shot: check `out`, read the examples (`holdout` of them held out, split by config.seed), open the bundle
    with `session`, load `init` (None: the bundle's defaults), fit, write the user to `out`; what `edge-lorax
    personalize` calls. config.budget_s counts from this call; refusals come before the fit, naming the file."""
    t0 = time.perf_counter()
    check_output(out, overwrite)
    progress = progress or (lambda msg: None)
    task = read_task(data_path, text_column, label_column, kind, fractions=(1 - holdout, holdout, 0.0), seed=config.seed)
    check_task(task, data_path)
    bundle = open_bundle(Path(bundle_path), session)
    check_bundle(bundle, task, data_path)
    config = replace(config, max_length=check_max_length(bundle, config.max_length))
    start = load_user(bundle, init) if init else None
    progress(f"{data_path}: {len(task.train) + len(task.validation)} examples ({len(task.train)} to fit, "
             f"{len(task.validation)} held out), checked in {time.perf_counter() - t0:.1f} s")
    result = personalize(bundle, task, start, config, progress, t0)
    write_user(result.user, out, overwrite)
    return result


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
    """The best checkpoint's coefficients with a head refitted on every local example (a head trained with the
    coefficients is kept as it is)."""
    x = np.concatenate(best["x"])
    y = np.concatenate([np.asarray(task.train.targets), np.asarray(task.validation.targets)])
    head = best["head"] if best["l2"] is None else fit_head(x, y, task.kind, task.num_labels, best["l2"])
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
