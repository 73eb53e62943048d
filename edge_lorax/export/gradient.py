"""The gradient graph of a classification / regression bundle: loss and d loss / d every coefficient and head input.

Inputs `input_ids`, `attention_mask` (B, T) int64, `labels` (B,) (int64 class ids, or float32 targets for regression)
and every feed of the forward graph under its user.npz name (optional inputs: the bundle's defaults). Outputs `loss`
(scalar, float32) and `grad.<feed name>` (the feed's shape, float32). The loss is the host trainer's
(builder.loop.task_loss, called here): mean cross-entropy over the batch, or mean squared error on the raw target scale.

Made by torch, once, on the host: the loss module with every feed as a parameter is traced by `torch.export`
(eager attention: SDPA's fused backward has no ONNX export), torch's joint forward-backward pass
(`torch.export.experimental._export_forward_backward`) appends the backward, the dynamo exporter writes ONNX, and
the parameters become the named optional inputs. The result is checked against torch autograd (`check_gradient`).
Does not: train (runtime.personalize does, with plain ONNX Runtime), quantize, or handle per-example, merged or
decoder graphs; dropout is off (eval mode), as in the forward graph.
"""

import contextlib
import warnings

import numpy as np
import onnx
import torch
import torch.nn.attention
from onnx import helper

from edge_lorax.builder.loop import task_loss
from edge_lorax.export.graph import Prepared
from edge_lorax.formats import names
from edge_lorax.formats.tasks import target_dtype

GRAD_TOLERANCE = 1e-4  # max |Δ| <= GRAD_TOLERANCE * max(1, max |torch gradient|), per checked feed set


class _LossModule(torch.nn.Module):
    """loss(input_ids, attention_mask, labels) of the export wrapper, every feed held as a parameter."""

    def __init__(self, prepared: Prepared):
        super().__init__()
        self.wrapper, self.task = prepared.wrapper, prepared.spec.task
        self.keys = list(prepared.wrapper.feed_names)
        self.feeds = torch.nn.ParameterDict({_param_key(k): torch.nn.Parameter(torch.from_numpy(
            np.array(prepared.defaults[k], np.float32))) for k in self.keys})

    def forward(self, input_ids, attention_mask, labels):  # (B, T) int64 x2, (B,)
        logits = self.wrapper(input_ids, attention_mask, *(self.feeds[_param_key(k)] for k in self.keys))[0]  # (B, L)
        return (task_loss(logits, labels, self.task),)


def _param_key(feed: str) -> str:
    return feed.replace(".", "__")  # a ParameterDict key cannot hold dots


@contextlib.contextmanager
def eager_frozen(model, owner=None):
    """Eager attention (SDPA's fused backward has no ONNX export; under transformers 4.57, which keeps its SDPA
    modules, SDPA runs as math) and frozen weights of `owner` (default: `model`) while tracing; both restored after."""
    owner = model if owner is None else owner
    before = model.config._attn_implementation
    grads = {n: p.requires_grad for n, p in owner.named_parameters()}
    model.set_attn_implementation("eager")
    for p in owner.parameters():
        p.requires_grad_(False)
    try:
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
            yield
    finally:
        model.set_attn_implementation(before)
        for n, p in owner.named_parameters():
            p.requires_grad_(grads[n])


@contextlib.contextmanager
def _quiet():
    """torch.export warns about each coefficient feed held as a plain attribute (they are the traced inputs, not
    state: one warning listing every feed of every layer) and about deprecated pytree specs inside torch."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The tensor attributes", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        yield


def export_gradient(prepared: Prepared, tokens: dict) -> onnx.ModelProto:
    """The gradient graph (see module docstring) traced on `tokens` (input_ids / attention_mask, dynamic B and T)."""
    from torch.export.experimental import _export_forward_backward
    from torch.export.graph_signature import OutputKind, OutputSpec
    from torch.utils import _pytree

    net = _LossModule(prepared)
    ids, mask = (torch.from_numpy(tokens[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK))
    labels = torch.from_numpy(np.zeros(ids.shape[0], target_dtype(prepared.spec.task)))  # (B,) int64 ids / float32
    dyn = torch.export.Dim.DYNAMIC
    with eager_frozen(prepared.wrapper.model, prepared.wrapper), _quiet():
        program = torch.export.export(net, (ids, mask, labels), dynamic_shapes=({0: dyn, 1: dyn}, {0: dyn, 1: dyn},
                                                                               {0: dyn}), strict=False)
        joint = _export_forward_backward(program, joint_loss_index=0)
    specs = joint.graph_signature.output_specs  # the loss, then one gradient per parameter
    targets = [s.target for s in specs[1:]]
    joint._graph_signature.output_specs = [OutputSpec(OutputKind.USER_OUTPUT, s.arg, None) for s in specs]
    joint.module_call_graph[0].signature.out_spec = _pytree.tree_flatten(tuple(range(len(specs))))[1]
    with _quiet():
        proto = torch.onnx.export(joint, (ids, mask, labels), None, dynamo=True, verbose=False,
                                  optimize=False).model_proto  # constant folding would fold the feeds into their uses
    by_target = {f"feeds.{_param_key(k)}": k for k in net.keys}
    shapes = {k: prepared.defaults[k].shape for k in prepared.wrapper.feed_names}
    return _name_io(proto, [by_target[t] for t in targets], by_target, shapes)


def _name_io(proto: onnx.ModelProto, grad_order: list, by_target: dict, shapes: dict) -> onnx.ModelProto:
    """Outputs `loss` + `grad.<feed>`, the parameters as optional inputs under their feed names (`shapes`: {feed:
    shape}, in input order), token inputs named. Shared by the encoder's and the decoder's gradient graphs."""
    graph = proto.graph
    rename = {graph.output[0].name: names.LOSS}
    rename.update({o.name: names.GRAD_PREFIX + k for o, k in zip(graph.output[1:], grad_order)})
    rename.update({i.name: n for i, n in zip(graph.input, (names.INPUT_IDS, names.ATTENTION_MASK, names.LABELS))})
    rename.update(by_target)
    _rename(graph, rename)
    present = {i.name for i in graph.initializer}
    for k, shape in shapes.items():
        if k not in present:
            raise ValueError(f"{k}: no initializer in the gradient graph; the exporter folded the parameter away")
        graph.input.append(helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(shape)))
    return proto


def _rename(graph: onnx.GraphProto, rename: dict):
    """Rename values everywhere in `graph` (node inputs/outputs, graph inputs/outputs, initializers, value infos)."""
    for node in graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    for coll in (graph.input, graph.output, graph.initializer, graph.value_info):
        for v in coll:
            v.name = rename.get(v.name, v.name)


def torch_gradients(prepared: Prepared, tokens: dict, labels: np.ndarray, feeds: dict) -> tuple:
    """(loss, {feed: gradient}) by torch autograd through the eager wrapper: the reference of check_gradient."""
    params = {k: torch.tensor(np.asarray(feeds.get(k, prepared.defaults[k]), np.float32), requires_grad=True)
              for k in prepared.wrapper.feed_names}
    ids, mask = (torch.from_numpy(tokens[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK))
    logits = prepared.wrapper(ids, mask, *params.values())[0]
    loss = task_loss(logits, torch.from_numpy(labels), prepared.spec.task)
    loss.backward()
    return loss.item(), {k: p.grad.detach().numpy() for k, p in params.items()}


def check_gradient(path, prepared: Prepared, tokens: dict, seed: int = 0) -> dict:
    """The graph at `path` against torch autograd on `tokens`: the defaults, then a seeded random set of every feed;
    raises RuntimeError past GRAD_TOLERANCE. Returns {"max_abs_diff", "scale", "tolerance", "feed_sets"}."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    batch = len(tokens[names.INPUT_IDS])
    labels = (rng.standard_normal(batch) if prepared.spec.task == names.TASK_REGRESSION else
              rng.integers(0, prepared.defaults[names.HEAD_BIAS].shape[-1], batch)).astype(target_dtype(prepared.spec.task))
    sets = [{}, {k: (rng.random(v.shape, dtype=np.float32) - 0.5) for k, v in prepared.defaults.items()}]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, scale = 0.0, 1.0
    for feeds in sets:
        loss, grads = torch_gradients(prepared, tokens, labels, feeds)
        got = sess.run(None, {**tokens, names.LABELS: labels, **feeds})
        want = [np.float32(loss)] + [grads[o.name[len(names.GRAD_PREFIX):]] for o in sess.get_outputs()[1:]]
        scale = max(scale, max(float(np.abs(w).max()) for w in want))
        worst = max(worst, max(float(np.abs(np.asarray(g) - w).max()) for g, w in zip(got, want)))
    if worst > GRAD_TOLERANCE * scale:
        raise RuntimeError(f"{path}: gradient graph differs from torch autograd by {worst:.3g} (tolerance "
                           f"{GRAD_TOLERANCE} x scale {scale:.3g}); export with --no-gradient to skip it")
    return {"max_abs_diff": worst, "scale": scale, "tolerance": GRAD_TOLERANCE, "feed_sets": len(sets)}


def save_gradient(proto: onnx.ModelProto, path) -> None:
    """One self-contained file (the base weights are small enough for one protobuf on the models this serves)."""
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path), full_check=False)

