"""ONNX export of an EigenLoRAx model: shared components baked into the graph, each user's coefficients as inputs.

Front door (`__all__`): `export_bundle` (the `edge-lorax export` command) and its options `ExportConfig`, `quantize_int8`,
`add_input_defaults`, and the bench's reference graphs in `edge_lorax.export.reference`. User files (`user.npz`,
`.onnx_adapter`) are read and written by `edge_lorax.formats`. Heavy imports (torch, transformers) happen when these
are first used, not on `import edge_lorax.export`. Does not serve users (edge_lorax.runtime does).
"""

from typing import TYPE_CHECKING

from edge_lorax.export.config import ExportConfig  # numpy only: `import edge_lorax.export` stays cheap

if TYPE_CHECKING:  # each name's home, spelled for static readers; at run time __getattr__ imports it on first use
    from edge_lorax.export.bundle import export_bundle
    from edge_lorax.export.passes import add_input_defaults
    from edge_lorax.export.quantize import quantize_int8

__all__ = ["ExportConfig", "add_input_defaults", "export_bundle", "quantize_int8"]
_HOMES = {"export_bundle": "bundle", "add_input_defaults": "passes", "quantize_int8": "quantize"}  # as imported above


def __getattr__(name):
    """A front-door name's module is imported on first use (torch and onnx: ~2.5 s), not by `import edge_lorax.export`."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
