"""ONNX export of an EigenLoRAx model: shared components baked into the graph, each user's coefficients as inputs.

Public API: `export_bundle` (the `edge-lorax export` command), `write_onnx_adapter` / `read_onnx_adapter`
(ONNX Runtime adapter files), `quantize_int8`, `add_input_defaults`. Heavy imports (torch, transformers) happen
when these are first used, not on `import edge_lorax.export`.
"""

__all__ = ["add_input_defaults", "export_bundle", "quantize_int8", "read_onnx_adapter", "write_onnx_adapter"]


def __getattr__(name):
    """Lazy re-exports: the runtime imports `edge_lorax.export.adapter_file` without pulling in torch."""
    if name == "export_bundle":
        from edge_lorax.export.bundle import export_bundle

        return export_bundle
    if name in ("write_onnx_adapter", "read_onnx_adapter"):
        from edge_lorax.export import adapter_file

        return getattr(adapter_file, name)
    if name == "quantize_int8":
        from edge_lorax.export.quantize import quantize_int8

        return quantize_int8
    if name == "add_input_defaults":
        from edge_lorax.export.defaults import add_input_defaults

        return add_input_defaults
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
