"""The gradient graph of a decoder bundle: masked causal-LM loss and d loss / d every coefficient input.

File `model.grad.onnx` (+ `model.grad.onnx.data`, the base weights) beside the KV-cache graph; no KV cache, one full
sequence per row. Inputs:
    input_ids, attention_mask  (B, T) int64; rows may be left-padded (positions come from the mask, as the host
                               trainer's builder.generative.Generation.loss gives them)
    labels                     (B, W) int64, W <= T: the next-token target of each of the last W positions of the
                               row (labels[:, j] is what position T - W + j must predict), -100 where no loss is taken
    every coefficient input    under its user.npz name (optional inputs: the bundle's defaults)
Outputs `loss` (scalar float32: mean cross-entropy over the non-ignored targets, HF's causal-LM loss) and
`grad.<coefficient input>` (the input's shape). Only the last W positions reach the LM head, so a short answer
(W = its tokens + 1) never pays the 49,152-word output layer on every position.

Made as export/gradient.py makes the encoder's: the causal LM with the subspace injected, each coefficient a
parameter, traced by `torch.export` (eager attention), torch's joint forward-backward pass appended, written by the
dynamo exporter; checked against torch autograd in float64 (`check_decoder_gradient`, <= GRAD_TOLERANCE relative plus
torch float32's own error on the same set) before the bundle is written. Base weights stay fp32 (the export's
precision does not apply to this file; see benchmarks/personalize_llm for the memory measured). Does not: train
(runtime.personalize_llm does), quantize, per-example graphs.
"""

from pathlib import Path

import numpy as np
import onnx
import torch

from edge_lorax.export.gradient import _name_io, _param_key, _quiet, eager_frozen
from edge_lorax.formats import names

# relative error (relative_diff) of the loss and of the gradient, per feed set, against float64 torch. Measured: tiny
# random Llama ~1e-6; SmolLM2-135M 1.04e-5 at check_sets' random user on random tokens (ONNX Runtime's fp32 vs float64;
# fp32 torch is as far off): fp32's floor through 30 layers, hence 3e-5, not 1e-5. A wrong backward is >= 1e-3. Each set
# is also allowed torch float32's own error on it (Gemma 3 270M: ONNX Runtime 1.1e-4, see check_decoder_gradient).
GRAD_TOLERANCE = 3e-5
B_SCALE = 0.2  # the random check set's coeff_B range (check_sets)
IGNORE = -100  # HF's ignore_index (builder.generative.IGNORE)
GRAD_DATA = names.BUNDLE_MODEL_GRADIENT + names.EXTERNAL_DATA_SUFFIX


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets of `labels` (B, W) int64 that are not IGNORE; logits (B, W, V)."""
    valid = labels != IGNORE
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (B, W, V)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, W)
    return (nll * valid).sum() / valid.sum().clamp(min=1)


def lm_forward(net, input_ids, attention_mask, labels) -> torch.Tensor:
    """The loss of the injected causal LM `net` on one batch (the graph's function; the coefficients as `net` holds
    them or feeds them)."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding as the host trainer pads
    t, w = input_ids.shape[1], labels.shape[1]
    keep = torch.arange(w, device=input_ids.device) + (t - w)  # (W,): the last W positions
    logits = net(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, logits_to_keep=keep,
                 use_cache=False).logits  # (B, W, V)
    return lm_loss(logits, labels)


class _LossModule(torch.nn.Module):
    """loss(input_ids, attention_mask, labels) of the injected causal LM, every coefficient held as a parameter."""

    def __init__(self, net, defaults: dict):
        super().__init__()
        self.net, self.keys = net, list(defaults)
        self.feeds = torch.nn.ParameterDict({_param_key(k): torch.nn.Parameter(torch.from_numpy(
            np.array(v, np.float32))) for k, v in defaults.items()})

    def forward(self, input_ids, attention_mask, labels):  # (B, T) int64 x2, (B, W) int64
        from edge_lorax.builder.inject import set_feed

        set_feed(self.net, {k: self.feeds[_param_key(k)] for k in self.keys})
        return (lm_forward(self.net, input_ids, attention_mask, labels),)


def load_injected(model_path: Path, subspace, defaults: dict):
    """The torch causal LM with the subspace injected, coefficients set to `defaults` (user.npz names)."""
    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_causal_lm

    net = load_causal_lm(model_path)
    net.config.use_cache = False
    inject_subspace(net, subspace, coeffs=defaults)
    return net


def sample_batch(vocab_size: int, batch: int = 2, seq: int = 12, answer: int = 5, seed: int = 0) -> dict:
    """Tokens to trace and check on: seeded ids, the last row left-padded by two, labels (B, answer) with the last
    position ignored (an answer's EOS predicts nothing)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, size=(batch, seq), dtype=np.int64)  # (B, T)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, :2] = 0
    labels = rng.integers(0, vocab_size, size=(batch, answer), dtype=np.int64)  # (B, W)
    labels[:, -1] = IGNORE
    return {names.INPUT_IDS: ids, names.ATTENTION_MASK: mask, names.LABELS: labels}


def _empty_permuted(size, physical_layout, **kwargs):
    """aten.empty_permuted (the backward's buffers; no ONNX translation in torch 2.13) as a plain empty tensor of
    the same logical shape: its contents are never read before written, and ONNX has no strides."""
    return torch.empty(size, **kwargs)


def export_decoder_gradient(net, defaults: dict, batch: dict) -> onnx.ModelProto:
    """The gradient graph (module docstring) of the injected `net`, traced on `batch` (dynamic B, T and W)."""
    from torch.export.experimental import _export_forward_backward
    from torch.export.graph_signature import OutputKind, OutputSpec
    from torch.utils import _pytree

    loss_net = _LossModule(net, defaults)
    args = tuple(torch.from_numpy(batch[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK, names.LABELS))
    dyn = torch.export.Dim.DYNAMIC
    with eager_frozen(net), _quiet():
        program = torch.export.export(loss_net, args, dynamic_shapes=({0: dyn, 1: dyn}, {0: dyn, 1: dyn},
                                                                      {0: dyn, 1: dyn}), strict=False)
        joint = _export_forward_backward(program, joint_loss_index=0)
        joint = joint.run_decompositions({torch.ops.aten.empty_permuted.default: _empty_permuted})
    specs = joint.graph_signature.output_specs  # the loss, then one gradient per parameter
    targets = [s.target for s in specs[1:]]
    joint._graph_signature.output_specs = [OutputSpec(OutputKind.USER_OUTPUT, s.arg, None) for s in specs]
    joint.module_call_graph[0].signature.out_spec = _pytree.tree_flatten(tuple(range(len(specs))))[1]
    with _quiet():
        proto = torch.onnx.export(joint, args, None, dynamo=True, verbose=False, optimize=False).model_proto
    by_target = {f"feeds.{_param_key(k)}": k for k in loss_net.keys}
    return _name_io(proto, [by_target[t] for t in targets], by_target, {k: v.shape for k, v in defaults.items()})


def torch_gradients(net, batch: dict, feeds: dict) -> tuple:
    """(loss, {input: gradient}) by torch autograd through the injected `net` (eager, in the net's dtype):
    check_decoder_gradient's reference."""
    from edge_lorax.builder.inject import set_feed

    dtype = next(net.parameters()).dtype
    params = {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=True) for k, v in feeds.items()}
    set_feed(net, params)
    try:
        loss = lm_forward(net, *(torch.from_numpy(batch[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK,
                                                                        names.LABELS)))
        loss.backward()
    finally:
        set_feed(net, None)
    return loss.item(), {k: p.grad.detach().numpy() for k, p in params.items()}  # float64 when `net` is


def check_sets(defaults: dict, seed: int = 0) -> list:
    """The feed sets checked: the defaults, then a seeded random user at the scale users have (the defaults may be
    zeros, where every coefficient gradient is 0: ΔW is bilinear): coeff_A ~ U(-0.5, 0.5) (the host trainer's start),
    coeff_B ~ U(-B_SCALE, B_SCALE) (rms 0.12; SmolLM2's projected decoder users: coeff_A rms 0.30, coeff_B rms
    0.07-0.12)."""
    rng = np.random.default_rng(seed)
    scale = {names.COEFF_A: 0.5, names.COEFF_B: B_SCALE}
    return [defaults, {k: (rng.random(v.shape, dtype=np.float32) - 0.5) * np.float32(2 * scale[k.rsplit(".", 1)[1]])
                       for k, v in defaults.items()}]


def relative_diff(got: list, want: list) -> float:
    """The relative error of the graph's outputs (the loss, then each gradient) against torch's: the larger of
    |Δ loss| / |loss| and ||Δ g|| / ||g|| over every gradient concatenated (the 2-norm relative error; 0 / 0 is 0)."""
    loss = abs(float(got[0]) - float(want[0])) / max(abs(float(want[0])), 1e-30)
    g, w = (np.concatenate([np.asarray(x, np.float64).ravel() for x in xs[1:]]) for xs in (got, want))
    norm = float(np.linalg.norm(w))
    return max(loss, float(np.linalg.norm(g - w)) / norm if norm else float(np.abs(g).max()))


def check_decoder_gradient(path, net, defaults: dict, batch: dict, seed: int = 0) -> dict:
    """The graph at `path` against torch autograd in float64 (`net` is converted in place) on `batch` for
    check_sets(defaults); RuntimeError when a set's relative_diff exceeds GRAD_TOLERANCE + that set's float32 floor
    (torch float32's own relative_diff from float64: Gemma 3 270M's is ~1e-4). Returns the manifest's check entry."""
    from edge_lorax.runtime.personalize_llm import gradient_session

    sess = gradient_session(path, threads=0)  # the fitter's session options: what is checked is what runs
    sets, order = check_sets(defaults, seed), [o.name[len(names.GRAD_PREFIX):] for o in sess.get_outputs()[1:]]
    ours = [sess.run(None, {**batch, **feeds}) for feeds in sets]
    torch32 = [_reference(net.float(), batch, feeds, order) for feeds in sets]
    net.double()  # the reference in float64: fp32 torch itself is ~1e-5 off on SmolLM2's gradients (30 layers)
    want = [_reference(net, batch, feeds, order) for feeds in sets]
    diffs = [relative_diff(g, w) for g, w in zip(ours, want)]
    floors = [relative_diff(t, w) for t, w in zip(torch32, want)]
    for d, f in zip(diffs, floors):
        if not d <= GRAD_TOLERANCE + f:
            raise RuntimeError(f"{path}: decoder gradient graph differs from torch autograd by {d:.3g} relative "
                               f"(tolerance {GRAD_TOLERANCE} + {f:.3g}, torch float32's own error); nothing written; "
                               "export with --no-gradient to skip it")
    return {"max_rel_diff": max(diffs), "tolerance": GRAD_TOLERANCE, "fp32_floor": floors, "feed_sets": len(sets),
            "batch": list(batch[names.INPUT_IDS].shape), "answer_positions": batch[names.LABELS].shape[1]}


def _reference(net, batch: dict, feeds: dict, order: list) -> list:
    """[loss, gradient per input in `order`] by torch autograd in the net's dtype (relative_diff's layout)."""
    loss, grads = torch_gradients(net, batch, feeds)
    return [np.float32(loss)] + [grads[k] for k in order]


def save_decoder_gradient(proto: onnx.ModelProto, folder: Path) -> list:
    """model.grad.onnx + its external data (the fp32 base weights); returns the file names."""
    onnx.save_model(proto, str(folder / names.BUNDLE_MODEL_GRADIENT), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=GRAD_DATA, size_threshold=1024)
    onnx.checker.check_model(str(folder / names.BUNDLE_MODEL_GRADIENT), full_check=False)
    return [names.BUNDLE_MODEL_GRADIENT, GRAD_DATA]


def write_decoder_gradient(folder: Path, model_path: Path, subspace, defaults: dict, vocab_size: int) -> dict:
    """Export, save and check the gradient graph into the bundle folder; returns the manifest's `gradient` entry."""
    net = load_injected(model_path, subspace, defaults)
    batch = sample_batch(vocab_size)
    files = save_decoder_gradient(export_decoder_gradient(net, defaults, batch), folder)
    check = check_decoder_gradient(folder / files[0], net, defaults, batch)
    return {"file": files[0], "external_data": files[1:], "loss": "causal_lm", "labels": names.LABELS,
            "ignore_index": IGNORE, "base_precision": "fp32", "check": check}
