"""Fit a decoder bundle's user on the device from local examples: numpy + onnxruntime + tokenizers, never torch.

    start    --init's user (checked by the one validator, formats.user), else the base model in the host trainer's
             "zero_b" start (coeff_A ~ U(-0.5, 0.5), coeff_B = 0: ΔW = 0, and B's gradient is not)
    fit      Adam (the host trainer's AdamW at weight decay 0: β 0.9 / 0.999, ε 1e-8) on every coefficient with exact
             gradients from the bundle's gradient graph (model.grad.onnx, export.decoder_gradient: masked causal-LM
             loss, mean over answer tokens), minibatches of `batch` fit examples, the host trainer's schedule
             (builder.loop.schedule: linear warm-up over 6 % of the steps, then linear decay to 0); a minibatch runs
             in chunks of `micro_batch` rows whose gradients are summed weighted by their answer tokens (exact)
    check    held-out examples (a seeded `holdout` share of the file's rows) scored on the bundle's own model.onnx
             (its precision, as `generate` serves it; batch 1, no padding): mean answer-token loss and exact match
             (greedy decoding yields exactly the answer: every answer token is the argmax after the ones before it)
    keep     the fit only if its held-out loss is below the start's; else the start is written (the report says so)
    memory   one session at a time (the scorer is closed while the gradient graph runs), and the gradient graph's
             session holds its weights once (gradient_session): SmolLM2-135M's fit peaks at 863 MiB, not 2,169 (benchmarks/personalize_llm)
The result is a user.npz bound to the bundle's subspace fingerprint (formats.user.write_user), which `generate`,
`export --coeffs` and `reconstruct` take. `personalize_llm_file` is the front door (`edge-lorax personalize` on a
decoder bundle). Does not: train a head, change the base model, fit per-example users in one run.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.atomic import check_output
from edge_lorax.formats.bundle import TARGET_DECODER, BundleError, bundle_file, check_target, read_manifest, user_input_shapes
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.user import User, check_fingerprint, conform_inputs, read_user, write_user
from edge_lorax.runtime.local_data import TEXT, Example, LocalData, read_local_data

IGNORE = -100  # the gradient graph's ignored target (HF's ignore_index)
DEFAULT_STEPS = 40  # benchmarks/decoder's training steps for EigenLoRAx users
MAX_LENGTH = 96  # benchmarks/decoder's prompt + answer tokens


@dataclass(frozen=True)
class LLMFitConfig:
    """steps: Adam steps exactly (reproducible bit for bit); else as many as fit in budget_s (loading included);
    neither: DEFAULT_STEPS. lr: the decoder benchmark's pick for EigenLoRAx users (benchmarks/decoder/report.json)."""

    steps: int | None = None
    budget_s: float | None = None
    batch: int = 8
    micro_batch: int = 1  # rows per gradient-graph run: SmolLM2 at batch 8 x <= 96 tokens, 1 thread: 1 -> 4.5 s/step, peak
    # RSS 1.53 GB; 2 -> 4.8 s, 1.67 GB; 8 -> 6.5 s, 2.53 GB (padding and activations grow with the chunk)
    lr: float = 0.05
    warmup: float = 0.06
    max_length: int | None = None  # tokens per example; None: MAX_LENGTH or the bundle's context if shorter
    holdout: float = 0.2
    seed: int = 0
    threads: int = 0  # 0: every usable core


@dataclass
class Result:
    user: User
    report: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ bundle

def decoder_manifest(bundle: Path) -> dict:
    """The manifest of a genai-decoder bundle that ships a gradient graph; BundleError naming the fix otherwise."""
    manifest = read_manifest(bundle)
    check_target(bundle, manifest, (TARGET_DECODER,), "personalize_llm fits decoder bundles")
    name = (manifest["files"] or {}).get("gradient")
    if not isinstance(name, str) or bundle_file(bundle, name) is None:
        raise BundleError(f"{bundle}: ships no gradient graph ({names.BUNDLE_MODEL_GRADIENT}); re-export it with this "
                          "edge-lorax without --no-gradient (`edge-lorax export --model ... -o BUNDLE`)")
    return manifest


def _options(threads: int):
    import onnxruntime as ort

    from edge_lorax.runtime.bundle import usable_cores

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = min(threads, usable_cores()) if threads > 0 else usable_cores()
    opts.inter_op_num_threads, opts.log_severity_level = 1, 3
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def _session(path: Path, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), _options(threads), providers=["CPUExecutionProvider"])


def gradient_session(path, threads: int = 1):
    """An ONNX Runtime session on a decoder gradient graph (`model.grad.onnx`) that holds its base weights once:
    constant folding off (it would store each weight's transpose beside the weight), no prepacked copies, no arena.
    Measured on SmolLM2-135M (fp32 graph, 1 thread, micro-batch 1, <= 96 tokens): peak RSS 856 vs 1,632 MiB with
    ORT's defaults, 3.75 vs 3.22 s per step of batch 8 (benchmarks/personalize_llm/report.md). The export check
    runs the graph through this session, so what is checked is what the fitter runs."""
    import onnxruntime as ort

    opts = _options(threads)
    opts.enable_cpu_mem_arena = opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["ConstantFolding"])


def start_user(bundle: Path, manifest: dict, init, rng) -> dict:
    """The starting coefficients: --init's (a user.npz or .onnx_adapter of this subspace, through the one validator),
    else the host trainer's zero_b start."""
    shapes = user_input_shapes(manifest)
    if init is None:
        return {k: ((rng.random(s) - 0.5).astype(np.float32) if k.endswith("." + names.COEFF_A) else
                    np.zeros(s, np.float32)) for k, s in shapes.items()}
    path = Path(init)
    if path.suffix == names.ADAPTER_SUFFIX:
        from edge_lorax.formats.onnx_adapter import read_onnx_adapter

        raw, version = read_onnx_adapter(path)
        check_fingerprint(version, manifest["fingerprint"], path)
        raw = {k: v[0] if v.ndim == 3 and v.shape[0] == 1 else v for k, v in raw.items()}
    else:
        user = read_user(path)
        check_fingerprint(user, manifest["fingerprint"], path)
        if user.head:
            raise InputError(f"{path}: a classifier user (head tensors); a decoder bundle generates, so start from a "
                             "generative user or from the base model (no --init)")
        raw = user.inputs()
    return {k: np.asarray(v, np.float32) for k, v in conform_inputs(path, raw, shapes, f"bundle {bundle}").items()}


# ------------------------------------------------------------------------------------------------ arrays

def batch_arrays(examples: list, pad: int) -> dict:
    """Left-padded input_ids / attention_mask (B, T) int64 and labels (B, W) int64: each position's next-token
    target where that token carries loss, else IGNORE, over the last W positions (W: from the first target on)."""
    width = max(len(e.ids) for e in examples)
    ids = np.full((len(examples), width), pad, np.int64)
    mask = np.zeros((len(examples), width), np.int64)
    targets = np.full((len(examples), width), IGNORE, np.int64)
    for b, e in enumerate(examples):
        n = len(e.ids)
        ids[b, width - n:], mask[b, width - n:] = e.ids, 1
        nxt = np.where(np.asarray(e.loss[1:]), np.asarray(e.ids[1:]), IGNORE)  # (n - 1,)
        targets[b, width - n:width - 1] = nxt
    first = int(np.argmax((targets != IGNORE).any(axis=0)))
    return {names.INPUT_IDS: ids, names.ATTENTION_MASK: mask, names.LABELS: targets[:, first:]}


def answer_tokens(examples: list) -> int:
    return sum(sum(e.loss[1:]) for e in examples)


def split_rows(data: LocalData, holdout: float, seed: int) -> tuple:
    """(fit, held-out) examples: a seeded `holdout` share of the file's rows held out (a text file's windows stay
    with their document), at least one row on each side."""
    rows = sorted({e.row for e in data.examples})
    order = np.random.default_rng(seed).permutation(len(rows))
    n_held = min(max(1, int(round(holdout * len(rows)))), len(rows) - 1)
    held = {rows[i] for i in order[:n_held]}
    return ([e for e in data.examples if e.row not in held], [e for e in data.examples if e.row in held])


# ------------------------------------------------------------------------------------------------ scoring

class Scorer:
    """Held-out loss and exact match on the bundle's model.onnx (prefill of one example at a time, empty cache)."""

    def __init__(self, bundle: Path, manifest: dict, threads: int):
        self.session = _session(bundle_file(bundle, manifest["files"]["model"]), threads)
        self.kv, self.per_example = manifest["kv"], manifest["mode"] == names.MODE_PER_EXAMPLE

    def _feeds(self, ids: tuple, coeffs: dict) -> dict:
        kv = self.kv
        feeds = {names.INPUT_IDS: np.array([ids], np.int64), names.ATTENTION_MASK: np.ones((1, len(ids)), np.int64)}
        for i in range(kv["layers"]):
            for kind in ("key", "value"):
                feeds[names.kv_input_name(i, kind)] = np.zeros((1, kv["heads"], 0, kv["head_size"]), np.float32)
        feeds.update({k: v[None] if self.per_example else v for k, v in coeffs.items()})
        return feeds

    def example(self, e: Example, coeffs: dict) -> tuple:
        """(summed answer-token loss, answer tokens, exact) of one example."""
        logits = self.session.run([names.LOGITS], self._feeds(e.ids, coeffs))[0][0]  # (T, V)
        at = np.flatnonzero(np.asarray(e.loss))  # answer tokens j, predicted at j - 1
        z = logits[at - 1].astype(np.float64)  # (n, V)
        logp = z - z.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        want = np.asarray(e.ids)[at]
        return float(-logp[np.arange(len(at)), want].sum()), len(at), bool((z.argmax(-1) == want).all())

    def score(self, examples: list, coeffs: dict) -> dict:
        """{"loss": mean answer-token loss, "exact_match": share of examples answered exactly}."""
        parts = [self.example(e, coeffs) for e in examples]
        total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return {"loss": round(total / max(count, 1), 6), "exact_match": round(float(np.mean([p[2] for p in parts])), 4)}


# ------------------------------------------------------------------------------------------------ fitting

def schedule(step: int, total: int, warmup: float) -> float:
    """The host trainer's rate factor (builder.loop.schedule): linear warm-up over `warmup` of `total`, then decay."""
    warm = max(1, int(warmup * total))
    return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


def gradients(session, examples: list, coeffs: dict, pad: int, micro: int) -> tuple:
    """(loss, {input: gradient}) of one minibatch: chunks of `micro` rows, weighted by their answer tokens, so the
    result is the whole minibatch's mean over answer tokens."""
    total, loss, grads = answer_tokens(examples), 0.0, {k: np.zeros_like(v) for k, v in coeffs.items()}
    outs = [o.name for o in session.get_outputs()]
    for i in range(0, len(examples), micro):
        part = examples[i:i + micro]
        got = dict(zip(outs, session.run(None, {**batch_arrays(part, pad), **coeffs})))
        w = answer_tokens(part) / total
        loss += w * float(got[names.LOSS])
        for k in grads:
            grads[k] += np.float32(w) * got[names.GRAD_PREFIX + k]
    return loss, grads


class Adam:
    """Adam as torch's AdamW at weight decay 0 (β 0.9 / 0.999, ε 1e-8, bias-corrected)."""

    def __init__(self, params: dict):
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params: dict, grads: dict, rate: float) -> dict:
        self.t += 1
        out = {}
        for k, p in params.items():
            g = grads[k]
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            m_hat, v_hat = self.m[k] / (1 - 0.9 ** self.t), self.v[k] / (1 - 0.999 ** self.t)
            out[k] = (p - rate * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
        return out


def _minibatches(n: int, size: int, rng):
    """Seeded epochs of shuffled indices, `size` at a time (an epoch's last short batch is topped up from the next)."""
    pool = []
    while True:
        while len(pool) < size:
            pool.extend(rng.permutation(n).tolist())
        yield pool[:size]
        pool = pool[size:]


def fit(session, fit_rows: list, start: dict, config: LLMFitConfig, pad: int, deadline: float, progress,
        clock) -> tuple:
    """Adam from `start` on `fit_rows` (module docstring); returns (coefficients, steps, last minibatch loss). Runs
    config.steps, else until `deadline` (seconds on `clock`), planned from the first step's time."""
    rng = np.random.default_rng(config.seed + 1)
    params, adam, batches = dict(start), Adam(start), _minibatches(len(fit_rows), min(config.batch, len(fit_rows)), rng)
    planned, t, loss, per_step = config.steps, 0, float("nan"), 0.0
    while (planned is None or t < planned) and (config.steps is not None or clock() + per_step < deadline):
        tick = clock()
        rows = [fit_rows[i] for i in next(batches)]
        loss, grads = gradients(session, rows, params, pad, config.micro_batch)
        per_step = clock() - tick
        if planned is None:
            planned = t + 1 + max(0, int((deadline - clock()) / per_step))
        params = adam.step(params, grads, config.lr * schedule(t, planned, config.warmup))
        t += 1
        progress(f"step {t}/{planned}: loss {loss:.4f} ({per_step:.1f} s/step, {clock():.0f} s)")
    return params, t, loss


# ------------------------------------------------------------------------------------------------ front door

def _check_config(config: LLMFitConfig):
    for name in ("batch", "micro_batch", "max_length"):
        if not (type(getattr(config, name)) is int and getattr(config, name) >= 1) and (name, getattr(config, name)) != (
                "max_length", None):
            raise InputError(f"{name.replace('_', '-')} {getattr(config, name)!r}: an integer >= 1 is needed")
    if config.steps is not None and not (type(config.steps) is int and config.steps >= 0):
        raise InputError(f"--steps {config.steps!r}: an integer >= 0 is needed")
    if config.budget_s is not None and not config.budget_s > 0:
        raise InputError(f"--budget-seconds {config.budget_s!r}: a positive number of seconds is needed")
    if not 0 < config.holdout < 1:
        raise InputError(f"--holdout {config.holdout!r}: a share between 0 and 1 is needed")


def peak_rss_mib() -> float | None:
    """This process's peak resident memory (VmHWM, /proc/self/status), MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _token_ids(manifest: dict) -> tuple:
    """(EOS id, pad id) from the manifest: the first EOS when it lists several; pad falls back to EOS."""
    eos = manifest["eos_token_id"]
    eos = eos[0] if isinstance(eos, list) else eos
    pad = manifest.get("pad_token_id")
    return eos, pad if isinstance(pad, int) else eos


def personalize_llm_file(bundle_path, data_path, out, *, init=None, config: LLMFitConfig = LLMFitConfig(),
                         text_column: str = "text", label_column: str = "label", overwrite: bool = False,
                         progress=None) -> Result:
    """Check `out`, read the bundle and the examples (runtime.local_data), start from `init` (None: the base model),
    fit, score, write the user to `out`; returns it with a report. Every refusal comes before the fit, one line
    naming the file and the fix; nothing is written unless the whole fit ran. config.budget_s counts from this call."""
    t0 = time.perf_counter()
    clock, progress = (lambda: time.perf_counter() - t0), progress or (lambda msg: None)
    check_output(out, overwrite)
    _check_config(config)
    bundle = Path(bundle_path)
    manifest = decoder_manifest(bundle)
    eos, pad = _token_ids(manifest)
    context = manifest["kv"]["context_length"]
    max_length = config.max_length or min(MAX_LENGTH, context)
    data = read_local_data(data_path, bundle, eos, max_length, context, text_column, label_column)
    fit_rows, held = split_rows(data, config.holdout, config.seed)
    start = start_user(bundle, manifest, init, np.random.default_rng(config.seed))
    progress(f"{data_path}: {len(data.examples)} {data.kind} examples ({len(fit_rows)} to fit, {len(held)} held out)")
    result = personalize_llm(bundle, manifest, data, fit_rows, held, start, config, pad, progress, clock)
    result.user.meta["init"] = Path(init).name if init else "base"
    write_user(result.user, out, overwrite)
    return result


def personalize_llm(bundle: Path, manifest: dict, data: LocalData, fit_rows: list, held: list, start: dict,
                    config: LLMFitConfig, pad: int, progress, clock) -> Result:
    """Score the start on `held`, fit on `fit_rows`, score again, keep the fit if its held-out loss is lower."""
    tick = clock()
    before = Scorer(bundle, manifest, config.threads).score(held, start)  # one session at a time: peak RSS
    score_s = clock() - tick
    progress(f"start: held-out loss {before['loss']:.4f}" + _em(data, before))
    session = gradient_session(bundle_file(bundle, manifest["files"]["gradient"]), config.threads)
    steps = DEFAULT_STEPS if config.steps is None and config.budget_s is None else config.steps
    deadline = float("inf") if config.budget_s is None else config.budget_s - score_s
    fit_start = clock()
    fitted, done, last = fit(session, fit_rows, start, LLMFitConfig(**{**config.__dict__, "steps": steps}), pad,
                             deadline, progress, clock)
    fit_s = clock() - fit_start
    del session
    after = Scorer(bundle, manifest, config.threads).score(held, fitted)
    kept = after["loss"] < before["loss"]
    progress(f"fit: held-out loss {after['loss']:.4f}" + _em(data, after) + ("; kept" if kept else
             "; not better than the start, so the start is written"))
    meta = {"method": "personalize-llm", "base_model": manifest.get("base_model"), "data": data.kind}
    if data.labels:
        meta["labels"] = list(data.labels)
    user = User(manifest["fingerprint"], fitted if kept else start, {}, {k: v for k, v in meta.items() if v})
    report = {"kind": data.kind, "examples": len(data.examples), "fit_rows": len(fit_rows), "heldout_rows": len(held),
              "steps": done, "last_batch_loss": round(last, 6), "start": before, "fitted": after, "kept": kept,
              "fit_seconds": round(fit_s, 2), "seconds": round(clock(), 2), "peak_rss_mib": peak_rss_mib(),
              "threads": config.threads or None, "batch": config.batch, "lr": config.lr}
    return Result(user, report)


def _em(data: LocalData, score: dict) -> str:
    return "" if data.kind == TEXT else f", exact match {score['exact_match']:.3f}"


def personalize_command(bundle, data, output, *, init=None, method: str = "auto", steps=None, budget_s=None,
                        holdout: float = 0.2, variant=None, threads: int = 0, max_length=None, seed: int = 0,
                        text_column: str = "text", label_column: str = "label", kind: str = "classification",
                        overwrite: bool = False, progress=None) -> Result:
    """`edge-lorax personalize`: a decoder bundle goes to personalize_llm_file, an encoder bundle to
    runtime.personalize.personalize_file (its defaults: --budget-seconds 55, --max-length 48, --variant fp32).
    Options one kind does not take are refused in one line."""
    if read_manifest(bundle)["target"] != TARGET_DECODER:
        from edge_lorax.runtime.bundle import SessionConfig
        from edge_lorax.runtime.personalize import FitConfig, personalize_file

        config = FitConfig(method=method, steps=steps, budget_s=55.0 if budget_s is None else budget_s, seed=seed,
                           max_length=max_length or 48)
        return personalize_file(bundle, data, output, init=init, text_column=text_column, label_column=label_column,
                                kind=kind, holdout=holdout, config=config, overwrite=overwrite, progress=progress,
                                session=SessionConfig(threads=threads, variant=variant or "fp32"))
    for flag, given in (("--method", method not in ("auto", "exact")), ("--variant", variant is not None),
                        ("--kind", kind != "classification")):
        if given:
            raise InputError(f"{flag} does not apply to a decoder bundle ({bundle}): it fits every coefficient by "
                             "exact gradients on its model.grad.onnx; drop it")
    config = LLMFitConfig(steps=steps, budget_s=budget_s, holdout=holdout, threads=threads, seed=seed,
                          max_length=max_length)
    return personalize_llm_file(bundle, data, output, init=init, config=config, text_column=text_column,
                                label_column=label_column, overwrite=overwrite, progress=progress)
