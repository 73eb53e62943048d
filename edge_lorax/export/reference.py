"""Reference graphs for the benchmark, built from the torch model: the plain base model and the multi-LoRA anchor.

The anchor is ONNX Runtime's multi-LoRA style: every adapted Linear gets the user's full `<module>.lora_A` (r, in)
and `<module>.lora_B` (out, r) as optional graph inputs (default initializer of the same name), the task head as
`head.weight_t` / `head.bias` like the EigenLoRAx graph — so anchor and EigenLoRAx differ only in the low-rank path.
Bench preparation only: needs torch, transformers and onnx, imported inside the functions, so importing this
module (as the runtime-without-torch test does) pulls none of them. Never used on the serving path.
"""

import warnings
from pathlib import Path

import numpy as np

from edge_lorax.formats import names

OPSET = 17


def lora_feeds(factors: dict) -> dict:
    """{module: (lora_A (r, in), lora_B (out, r))} (edge_lorax.project.lora_factors) -> graph feeds by input name."""
    out = {}
    for module, (a, b) in factors.items():
        out[names.coeff_name(module, names.LORA_A)] = np.ascontiguousarray(a, np.float32)
        out[names.coeff_name(module, names.LORA_B)] = np.ascontiguousarray(b, np.float32)
    return out


def _patch_forward(layer, fn):
    """Replace one module's forward by a closure (no new classes: this module must import without torch)."""
    layer.forward = fn


def patch_lora(model, modules: list, holder: dict):
    """Each target Linear computes W x + b + (x A^T) B^T with A, B read from `holder` at run time."""
    from edge_lorax.builder.inject import find_module

    for module in modules:
        _, layer = find_module(model, module)
        base = layer.forward
        a_name, b_name = names.coeff_name(module, names.LORA_A), names.coeff_name(module, names.LORA_B)
        _patch_forward(layer, lambda x, base=base, a=a_name, b=b_name: base(x) + (x @ holder[a].T) @ holder[b].T)


def patch_head(model, holder: dict):
    """The task head as MatMul + Add over `head.weight_t` / `head.bias` from `holder` (never Gemm: see NOTES)."""
    from edge_lorax.builder.models import head_module

    layer = getattr(model, head_module(model))
    _patch_forward(layer, lambda x: x @ holder[names.HEAD_WEIGHT_T] + holder[names.HEAD_BIAS])


def head_defaults(model) -> dict:
    """The model's own head as `head.*` arrays (weight pre-transposed)."""
    from edge_lorax.builder.models import head_module

    head = getattr(model, head_module(model))
    return {names.HEAD_WEIGHT_T: head.weight.detach().T.contiguous().numpy().copy(),
            names.HEAD_BIAS: head.bias.detach().numpy().copy()}


def _wrapper(model, feed_names: list, holder: dict):
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *tensors):
            holder.clear()
            holder.update(zip(feed_names, tensors))
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Wrapper().eval()


def add_defaults(path: Path, defaults: dict):
    """Give each feed input an initializer of the same name: optional inputs, usable by ORT's LoraAdapter path."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    have = {i.name for i in model.graph.input}
    for name, value in defaults.items():
        if name not in have:
            raise RuntimeError(f"{path}: feed {name} was constant-folded away by the exporter; it must stay an input")
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    seen = set()
    for i, node in enumerate(model.graph.node):  # unique node names: nodes_to_exclude matches by name
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    onnx.save(model, str(path))


def export_fed(model, feeds: dict, holder: dict, path) -> Path:
    """torch.onnx.export (TorchScript) with `feeds` (name -> default array) as extra optional inputs after the
    token inputs; dynamic batch and sequence axes. The model's patched layers read them from `holder`."""
    import torch

    feed_names = list(feeds)
    wrapper = _wrapper(model, feed_names, holder)
    ids = torch.ones((2, 8), dtype=torch.long)
    args = (ids, torch.ones_like(ids), *[torch.from_numpy(np.asarray(feeds[k], np.float32)) for k in feed_names])
    axes = {names.INPUT_IDS: {0: "batch", 1: "sequence"}, names.ATTENTION_MASK: {0: "batch", 1: "sequence"},
            names.LOGITS: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings, as in the exporter
        torch.onnx.export(wrapper, args, str(path), input_names=[names.INPUT_IDS, names.ATTENTION_MASK, *feed_names],
                          output_names=[names.LOGITS], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    add_defaults(Path(path), {k: feeds[k] for k in feed_names})
    return Path(path)


def export_plain(model, path) -> Path:
    """The base model exported as is: no adapters, no extra inputs."""
    return export_fed(model, {}, {}, path)


def export_anchor(model, factors: dict, head: dict, path) -> Path:
    """The multi-LoRA anchor for one user: lora_A/lora_B (+ head) inputs whose defaults are that user's tensors."""
    holder = {}
    patch_lora(model, sorted(factors), holder)
    if head:
        patch_head(model, holder)
    return export_fed(model, {**lora_feeds(factors), **head}, holder, path)


def feed_names(path) -> list:
    """Graph inputs other than token inputs (per-user feeds), in graph order."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [i.name for i in model.graph.input if i.name not in names.TOKEN_INPUTS]


def feed_consumers(path) -> list:
    """Names of the nodes that read a per-user graph input: what quantize_dynamic must leave alone."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    feeds = set(feed_names(path))
    return [n.name for n in model.graph.node if feeds & set(n.input)]


def quantize_int8(src, dst) -> Path:
    """Dynamic int8 of the weights, excluding every node that consumes a feed (else the inputs vanish; see NOTES)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, nodes_to_exclude=feed_consumers(src))
    return Path(dst)
