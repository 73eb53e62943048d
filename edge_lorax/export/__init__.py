"""ONNX export of an EigenLoRAx model: shared components baked into the graph, each user's coefficients as inputs.

Public API: `export_bundle` (the `edge-lorax export` command), `quantize_int8`, `add_input_defaults`, and the
bench's reference graphs in `edge_lorax.export.reference`. User files (`user.npz`, `.onnx_adapter`) are read and
written by `edge_lorax.formats`. Heavy imports (torch, transformers) happen when these are first used, not on
`import edge_lorax.export`. Does not serve users (edge_lorax.runtime does).
"""

__all__ = ["add_input_defaults", "export_bundle", "quantize_int8"]


def __getattr__(name):
    """Lazy re-exports: `import edge_lorax.export` stays cheap."""
    if name == "export_bundle":
        from edge_lorax.export.bundle import export_bundle

        return export_bundle
    if name == "quantize_int8":
        from edge_lorax.export.quantize import quantize_int8

        return quantize_int8
    if name == "add_input_defaults":
        from edge_lorax.export.passes import add_input_defaults

        return add_input_defaults
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
