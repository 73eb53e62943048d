"""Torch -> ONNX for an injected model: base weights and components as constants, coefficients as graph inputs.

The wrapper's forward(input_ids, attention_mask, *coefficient tensors) hands the tensors to the EigenLoRAx layers
(and to the task head) through `set_feed`, so no exporter can constant-fold them; the graph inputs are named
exactly like the keys of a user.npz. Exports with the TorchScript exporter (fast, checked on BERT, GPT-2, Llama)
or, on request, the dynamo exporter. Tasks: sequence classification / regression (head = MatMul + Add over a
pre-transposed weight input; a second output `head_input`, what the head reads, lets a device fit the head itself),
mean-pooled features, causal-LM logits.
Does not: KV cache or generation, token_type_ids inputs, encoder-decoder models, heads other than a Linear.
"""

import contextlib
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_lorax.builder.inject import inject_subspace, set_feed
from edge_lorax.builder.models import head_module, read_head, write_head
from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.user import User

OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
HEAD_TASKS = (names.TASK_CLASSIFICATION, names.TASK_REGRESSION)
SAMPLE_BATCH, SAMPLE_SEQ = 2, 7  # trace shapes; both axes are exported as symbolic dims


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: shape holds ints and symbolic dim names (names.DIM_BATCH, names.DIM_SEQUENCE)."""

    name: str
    shape: tuple
    dtype: str = "float32"

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphSpec:
    """What an exported graph takes and gives; `feeds` are the per-user inputs (coefficients, then head)."""

    task: str
    mode: str
    tokens: tuple  # TensorSpec of input_ids, attention_mask
    feeds: tuple  # TensorSpec per coefficient / head input, in graph order
    outputs: tuple  # TensorSpec

    @property
    def feed_names(self) -> list:
        return [s.name for s in self.feeds]

    @property
    def coeff_names(self) -> list:
        return [s.name for s in self.feeds if not s.name.startswith(names.HEAD_PREFIX)]


@dataclass(frozen=True)
class Prepared:
    """A model ready to export: the eager wrapper (also the torch reference), its spec and the input defaults."""

    wrapper: nn.Module
    spec: GraphSpec
    defaults: dict = field(repr=False)  # input name -> float32 array: the optional inputs' initializers
    head_source: str | None = None  # "coeffs" | "checkpoint" | "zeros" | None (no head input)


class FeedHead(nn.Module):
    """The task head as MatMul + Add over feed tensors head.weight_t (in, L) and head.bias (L,); never Gemm."""

    def __init__(self):
        super().__init__()
        self.feed, self.seen = {}, None

    def forward(self, x):  # x: (B, in) or (B, T, in)
        self.seen = x  # the wrapper returns it as head_input
        w, b = self.feed[names.HEAD_WEIGHT_T], self.feed[names.HEAD_BIAS]  # (in, L), (L,) or (B, in, L), (B, L)
        if w.dim() == 2:
            return x @ w + b  # (..., L)
        x3 = x.unsqueeze(1) if x.dim() == 2 else x  # (B, T|1, in)
        y = x3 @ w + b.unsqueeze(1)  # (B, T|1, L)
        return y.squeeze(1) if x.dim() == 2 else y


class ExportWrapper(nn.Module):
    """forward(input_ids, attention_mask, *feeds) -> the task output, then head_input (B, in) when `head_input` is
    set (a FeedHead reading one pooled vector per example) or last_hidden_state (B, T, H) for features; feeds named
    like user.npz keys."""

    def __init__(self, model: nn.Module, task: str, feed_names: list, head: FeedHead | None, head_input: bool = False):
        super().__init__()
        self.model, self.task, self.feed_names, self.head = model, task, list(feed_names), head
        self.head_input = head_input

    def forward(self, input_ids, attention_mask, *tensors):  # (B, T) int64 x2, then one tensor per feed name
        feed = dict(zip(self.feed_names, tensors))  # a fresh dict per call: the dynamo tracer sees every read
        if self.feed_names:
            set_feed(self.model, feed)
        if self.head is not None:
            self.head.feed = feed
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.task == names.TASK_FEATURES:  # pooled first (the runtime's vector), then what optimum / ST read
            return mean_pool(out.last_hidden_state, attention_mask), out.last_hidden_state  # (B, H), (B, T, H)
        if self.head_input:
            return out.logits, self.head.seen  # (B, L), (B, in)
        return out.logits  # (B, L) or (B, T, V)


def reads_pooled(model, head: FeedHead) -> bool:
    """Whether the head reads one vector per example (BERT-style pooler / CLS), checked by one tiny forward; a head
    over every token's state (Llama-style sequence classification, pooled after the head) does not."""
    tokens = sample_tokens(model.config.vocab_size, batch=1, seq=3)
    head.feed = {k: torch.zeros(v) for k, v in ((names.HEAD_WEIGHT_T, (model.config.hidden_size, 1)),
                                                 (names.HEAD_BIAS, (1,)))}
    with torch.no_grad():
        try:
            model(**{k: torch.from_numpy(v) for k, v in tokens.items()})
        except Exception:  # a head whose input width is not hidden_size: no head_input output
            return False
    seen, head.seen, head.feed = head.seen, None, {}
    return seen is not None and seen.dim() == 2


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens (sentence-transformers pooling); an all-padding row gives zeros, not NaN."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)


def load_task_model(path, task: str, num_labels: int):
    """(model in eval mode, head_in_checkpoint); heads missing from the checkpoint are seeded, never trusted."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if task == names.TASK_FEATURES:
        return AutoModel.from_pretrained(path).eval(), False
    if task == names.TASK_CAUSAL_LM:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        model.config.use_cache = False
        return model, False
    problem = "regression" if task == names.TASK_REGRESSION else "single_label_classification"
    with torch.random.fork_rng():  # a head absent from the checkpoint is initialised identically on every export
        torch.manual_seed(0)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, output_loading_info=True, problem_type=problem,
            ignore_mismatched_sizes=True)  # a checkpoint head of another width is re-seeded, as a missing one is
    head = head_module(model)
    fresh = list(info["missing_keys"]) + [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())]
    return model.eval(), not any(k.startswith(head + ".") for k in fresh)


def _coeff_shapes(subspace: Subspace, coeffs: User | None) -> dict:
    """{input name: (r, K)} per module, sorted by name: the coefficients' shapes if given, else the subspace's."""
    out = {}
    for module in sorted(subspace.modules):
        ms = subspace.modules[module]
        for side, default in ((names.COEFF_A, (ms.rank, ms.k)), (names.COEFF_B, (ms.k, ms.rank))):
            key = names.coeff_name(module, side)
            out[key] = tuple(coeffs.coefficients[key].shape) if coeffs else default
    return out


def _head_defaults(model, head_in_checkpoint: bool, coeffs: User | None) -> tuple:
    """({head.weight_t, head.bias} defaults, source): the user's head, else the checkpoint's, else zeros."""
    if coeffs is not None and coeffs.head:
        return {k: np.asarray(coeffs.head[k], np.float32) for k in (names.HEAD_WEIGHT_T, names.HEAD_BIAS)}, "coeffs"
    head = read_head(model)  # (in, L), (L,)
    if not head_in_checkpoint:
        return {k: np.zeros_like(v) for k, v in head.items()}, "zeros"
    return head, "checkpoint"


def _batched(shape: tuple, per_example: bool) -> tuple:
    return (names.DIM_BATCH, *shape) if per_example else tuple(shape)


def output_specs(task: str, model, head_input: bool = False) -> tuple:
    """The graph's outputs: features, LM logits, or the head's logits then (head_input) what the head reads."""
    cfg = model.config
    if task == names.TASK_FEATURES:  # + the token states: ORTModelForFeatureExtraction / sentence-transformers read them
        return (TensorSpec(names.FEATURES, (names.DIM_BATCH, cfg.hidden_size)),
                TensorSpec(names.LAST_HIDDEN_STATE, (names.DIM_BATCH, names.DIM_SEQUENCE, cfg.hidden_size)))
    if task == names.TASK_CAUSAL_LM:
        return (TensorSpec(names.LOGITS, (names.DIM_BATCH, names.DIM_SEQUENCE, cfg.vocab_size)),)
    logits = TensorSpec(names.LOGITS, (names.DIM_BATCH, cfg.num_labels))
    return (logits, TensorSpec(names.HEAD_INPUT, (names.DIM_BATCH, cfg.hidden_size))) if head_input else (logits,)


def prepare(model, head_in_checkpoint: bool, subspace: Subspace, coeffs: User | None, task: str,
            per_example: bool) -> Prepared:
    """Inject the subspace, swap the head for a FeedHead, and collect specs and defaults (zeros or the user's)."""
    shapes = _coeff_shapes(subspace, coeffs)
    inject_subspace(model, subspace, coeffs=coeffs.coefficients if coeffs else None)
    defaults = {k: np.asarray(coeffs.coefficients[k], np.float32) if coeffs else np.zeros(s, np.float32)
                for k, s in shapes.items()}
    head, source, pooled = None, None, False
    if task in HEAD_TASKS:
        head_vals, source = _head_defaults(model, head_in_checkpoint, coeffs)
        defaults.update(head_vals)
        head = FeedHead()
        setattr(model, head_module(model), head)
        pooled = reads_pooled(model, head)
    if per_example:
        defaults = {k: v[None] for k, v in defaults.items()}  # (1, ...): broadcasts over any batch when not fed
    feeds = tuple(TensorSpec(k, _batched(v.shape[1:] if per_example else v.shape, per_example)) for k, v in defaults.items())
    mode = names.MODE_PER_EXAMPLE if per_example else names.MODE_SHARED
    spec = GraphSpec(task, mode, token_specs(), feeds, output_specs(task, model, pooled))
    return Prepared(ExportWrapper(model, task, list(defaults), head, pooled).eval(), spec, defaults, source)


def prepare_merged(model, subspace: Subspace, coeffs: User, task: str) -> Prepared:
    """One user's ΔW folded into the base weights and the head set from the user; the graph has no feeds."""
    from edge_lorax.builder.merge import merged_model

    if task in HEAD_TASKS and coeffs.head:
        write_head(model, coeffs.head)  # (L, in), (L,)
    merged_model(model, subspace, coeffs)
    spec = GraphSpec(task, names.MODE_MERGED, token_specs(), (), output_specs(task, model))
    return Prepared(ExportWrapper(model, task, [], None).eval(), spec, {}, "coeffs" if coeffs.head else None)


def token_specs() -> tuple:
    dims = (names.DIM_BATCH, names.DIM_SEQUENCE)
    return (TensorSpec(names.INPUT_IDS, dims, "int64"), TensorSpec(names.ATTENTION_MASK, dims, "int64"))


def sample_tokens(vocab_size: int, batch: int = SAMPLE_BATCH, seq: int = SAMPLE_SEQ, seed: int = 0) -> dict:
    """Seeded token ids in [1, vocab) and a mask whose last row is right-padded: masks are exercised."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, size=(batch, seq), dtype=np.int64)  # (B, T)
    mask = np.ones((batch, seq), np.int64)  # (B, T)
    mask[-1, seq - 2:] = 0
    return {names.INPUT_IDS: ids, names.ATTENTION_MASK: mask}


def _trace_args(spec: GraphSpec, defaults: dict, tokens: dict) -> tuple:
    """Positional torch args: tokens, then each feed at the tokens' batch size (per-example) or as is."""
    batch = tokens[names.INPUT_IDS].shape[0]
    feeds = [np.repeat(defaults[s.name], batch, 0) if s.shape[:1] == (names.DIM_BATCH,) else defaults[s.name]
             for s in spec.feeds]
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (*tokens.values(), *feeds))


def _dynamic_axes(spec: GraphSpec) -> dict:
    return {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
            for s in (*spec.tokens, *spec.feeds, *spec.outputs) if any(isinstance(d, str) for d in s.shape)}


def export_onnx(prepared: Prepared, tokens: dict, exporter: str = "torchscript") -> "onnx.ModelProto":  # noqa: F821
    """The exported ModelProto, weights loaded in memory (written to a scratch file first, so > 2 GB can work);
    the wrapper stays usable eagerly after."""
    import onnx

    if exporter not in EXPORTERS:
        raise InputError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    spec, args = prepared.spec, _trace_args(prepared.spec, prepared.defaults, tokens)
    io_names = {"input_names": [s.name for s in (*spec.tokens, *spec.feeds)], "output_names": [s.name for s in spec.outputs]}
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings
        path = Path(scratch) / "model.onnx"
        if exporter == "dynamo":
            _export_dynamo(prepared.wrapper, args, spec, io_names, path)
        else:
            with _traceable_masks():
                torch.onnx.export(prepared.wrapper, args, str(path), dynamo=False, opset_version=OPSET,
                                  dynamic_axes=_dynamic_axes(spec), do_constant_folding=True, **io_names)
        return onnx.load(str(path))


def _broadcast_mask(batch_size, cache_position, kv_length, kv_offset=0, mask_function=None, attention_mask=None,
                    local_size=None, allow_is_causal_skip=True, **kwargs):
    """transformers 4.57's sdpa_mask built by broadcasting index tensors instead of torch.vmap (as optimum's exporter
    patches it): (batch, 1, q, kv) bool, or None where SDPA's is_causal serves (never while tracing)."""
    from transformers import masking_utils as mu

    mask_function = mask_function or mu.causal_mask_function
    q_length = cache_position.shape[0]
    padding_mask = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
    if allow_is_causal_skip and mu._ignore_causal_mask_sdpa(padding_mask, q_length, kv_length, kv_offset, local_size):
        return None
    if padding_mask is not None:
        mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding_mask))
    device = cache_position.device
    batch = torch.arange(batch_size, dtype=torch.long, device=device)[:, None, None, None]
    head = torch.arange(1, dtype=torch.long, device=device)[None, :, None, None]
    kv = torch.arange(kv_length, dtype=torch.long, device=device)[None, None, None, :] + kv_offset
    mask = mask_function(batch, head, cache_position[None, None, :, None], kv)
    return mask.expand(batch_size, -1, q_length, kv_length)


@contextlib.contextmanager
def _traceable_masks():
    """transformers 4.5x (the optimum environment) builds causal masks with torch.vmap, which the TorchScript tracer
    cannot follow (torch 2.13: `RuntimeError: unordered_map::at`); while tracing, `_broadcast_mask` stands in.
    transformers 5.x has one tracer-aware builder (no sdpa_mask_recent_torch): nothing to do."""
    try:
        from transformers import masking_utils as mu
    except ImportError:
        mu = None
    recent = getattr(mu, "sdpa_mask_recent_torch", None)
    if recent is None or mu.sdpa_mask is not recent:
        yield
        return
    registry = mu.ALL_MASK_ATTENTION_FUNCTIONS
    local = "sdpa" in registry._local_mapping
    saved = registry["sdpa"]
    mu.sdpa_mask, registry["sdpa"] = _broadcast_mask, _broadcast_mask  # eager_mask calls the module's sdpa_mask
    try:
        yield
    finally:
        mu.sdpa_mask = recent
        if local:
            registry["sdpa"] = saved
        else:
            del registry["sdpa"]


def _export_dynamo(wrapper, args, spec: GraphSpec, io_names: dict, path: Path):
    """torch.export first (torch.onnx turns a varargs dynamic_shapes tuple into a list and rejects it), then ONNX."""
    dyn = torch.export.Dim.DYNAMIC  # a named Dim trips transformers' `seq <= max_position` guard
    feed_dims = tuple({0: dyn} if s.shape[:1] == (names.DIM_BATCH,) else None for s in spec.feeds)
    program = torch.export.export(wrapper, args, dynamic_shapes=({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, feed_dims),
                                  strict=False)
    torch.onnx.export(program, args, None, dynamo=True, verbose=False, **io_names).save(str(path))
