"""The bench's reference graphs, made by the exporter's own code: the plain base model and the multi-LoRA anchor.

Both are traced by `graph.export_onnx` (TorchScript, `graph.OPSET`, symbolic batch × sequence) through the
exporter's `ExportWrapper`, then run through `encoder_bundle.build_onnx`'s passes (dim names, node names, input
defaults, metadata) and written by `encoder_bundle.save_model`; their int8 variants come from
`quantize.quantize_int8`, the product's one quantizer (per-channel, the whole low-rank path kept fp32). So the bench
compares the method, not two exporters.

The anchor is ONNX Runtime's multi-LoRA style: every adapted Linear computes W x + b + (x Aᵀ) Bᵀ with the user's full
`<module>.lora_A` (r, in) and `<module>.lora_B` (out, r) as optional graph inputs, and the task head is the
exporter's FeedHead over `head.weight_t` / `head.bias` — anchor and EigenLoRAx differ only in the low-rank path.
The plain graph is the base model through the same wrapper with no inputs but the tokens (like a merged export).
torch, transformers and onnx are imported inside the functions, so the bench's run and report modules import this
one cheaply. Does not verify against torch (the bench's parity table does) and is never on the serving path.
"""

from pathlib import Path

import numpy as np

from edge_lorax.formats import names

MODE_PLAIN, MODE_ANCHOR = "reference-plain", "reference-anchor"  # GraphSpec.mode, written as edge_lorax.mode


def lora_feeds(factors: dict) -> dict:
    """{module: (lora_A (r, in), lora_B (out, r))} (builder.project.lora_factors) -> graph inputs by name."""
    out = {}
    for module, (a, b) in factors.items():
        out[names.coeff_name(module, names.LORA_A)] = np.ascontiguousarray(a, np.float32)
        out[names.coeff_name(module, names.LORA_B)] = np.ascontiguousarray(b, np.float32)
    return out


def _patch_forward(layer, fn):
    """Replace one module's forward by a closure (no new classes at import: this module imports without torch)."""
    layer.forward = fn


def _patch_lora(model, modules: list, holder: dict):
    """Each target Linear computes W x + b + (x Aᵀ) Bᵀ with A, B read from `holder` at run time."""
    from edge_lorax.builder.inject import find_module

    for module in modules:
        _, layer = find_module(model, module)
        base = layer.forward
        a_name, b_name = names.coeff_name(module, names.LORA_A), names.coeff_name(module, names.LORA_B)
        _patch_forward(layer, lambda x, base=base, a=a_name, b=b_name: base(x) + (x @ holder[a].T) @ holder[b].T)


def _filling(inner, feed_names: list, holder: dict):
    """The exporter's wrapper with `holder` filled from the graph inputs first (the patched LoRA layers read it).
    `.model` is the HF model, as on ExportWrapper (build_onnx reads its config)."""
    import torch

    class Filling(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        @property
        def model(self):
            return self.inner.model

        def forward(self, input_ids, attention_mask, *tensors):  # (B, T) int64 x2, then one tensor per feed name
            holder.clear()
            holder.update(zip(feed_names, tensors))
            return self.inner(input_ids, attention_mask, *tensors)

    return Filling().eval()


def _reference_graph(model, task: str, feeds: dict, mode: str, holder: dict | None = None):
    """A graph.Prepared for `model`: `feeds` (name -> default array, shapes static) become optional inputs after the
    tokens; `head.*` feeds replace the task head by the exporter's FeedHead; `holder` is filled for patched layers."""
    from edge_lorax.builder.models import head_module
    from edge_lorax.export import graph as g

    head = None
    if task in g.HEAD_TASKS and names.HEAD_WEIGHT_T in feeds:
        head = g.FeedHead()
        setattr(model, head_module(model), head)
    wrapper = g.ExportWrapper(model, task, list(feeds), head).eval()
    if holder is not None:
        wrapper = _filling(wrapper, list(feeds), holder)
    specs = tuple(g.TensorSpec(k, tuple(np.shape(v))) for k, v in feeds.items())
    spec = g.GraphSpec(task, mode, g.token_specs(), specs, g.output_specs(task, model))
    return g.Prepared(wrapper, spec, {k: np.asarray(v, np.float32) for k, v in feeds.items()})


def _write_graph(prepared, path) -> Path:
    """The exporter's build_onnx (trace + passes) and save_model, checked like a bundle's model.onnx."""
    import onnx

    from edge_lorax.export.encoder_bundle import build_onnx, save_model

    meta = {"edge_lorax.mode": prepared.spec.mode, "edge_lorax.task": prepared.spec.task}
    save_model(build_onnx(prepared, "torchscript", meta), Path(path))
    onnx.checker.check_model(str(path), full_check=True)
    return Path(path)


def export_plain(model, task: str, path) -> Path:
    """The base model as is (its own head, if any): no inputs but the tokens."""
    return _write_graph(_reference_graph(model, task, {}, MODE_PLAIN), path)


def export_anchor(model, task: str, factors: dict, head: dict, path) -> Path:
    """The multi-LoRA anchor for one user: lora_A/lora_B (+ head) inputs whose defaults are that user's tensors."""
    holder = {}
    _patch_lora(model, sorted(factors), holder)
    feeds = {**lora_feeds(factors), **(head if task in (names.TASK_CLASSIFICATION, names.TASK_REGRESSION) else {})}
    return _write_graph(_reference_graph(model, task, feeds, MODE_ANCHOR, holder), path)


def feed_names(path) -> list:
    """The graph's optional inputs (input + default initializer: the per-user inputs), in graph-input order."""
    import onnx

    from edge_lorax.export.passes import overridable

    return overridable(onnx.load(str(path), load_external_data=False))


def quantized(src, dst) -> Path:
    """The product's int8 (export.quantize.quantize_int8) of any graph: the low-rank path of its optional inputs
    kept fp32, and those inputs checked to survive; ORT's and the quantizer's chatter muted as in the exporter."""
    from edge_lorax.export.encoder_bundle import quiet
    from edge_lorax.export.quantize import quantize_int8

    with quiet():
        return quantize_int8(src, dst, feed_names(src))
