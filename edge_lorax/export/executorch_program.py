"""What both ExecuTorch targets share (export.executorch_bundle for encoders, export.executorch_decoder for
decoders): the bundle's file names, a quiet context for torch.export and lowering, and the program's method through
ExecuTorch's Python runtime (it imports torch: export side and tests only). Does not lower or verify.
"""

import contextlib
import io
import logging
import warnings
from pathlib import Path

__all__ = ["PTE_FILE", "DEFAULTS_FILE", "quiet", "load_method", "unsupported_flags"]

PTE_FILE, DEFAULTS_FILE = "model.pte", "defaults.npz"


@contextlib.contextmanager
def quiet():
    """Exporter and lowering warnings and ExecuTorch's INFO logging muted, stdout kept clean; restored after."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def load_method(path: Path):
    """The program's `forward` through ExecuTorch's Python runtime (imports torch: export side only)."""
    from executorch.runtime import Runtime

    with quiet():
        return Runtime.get().load_program(str(path)).load_method("forward")


def unsupported_flags(config, quantize=(None,)) -> list:
    """The export options (ExportConfig) set on `config` that no .pte program takes, `--quantize` unless its value is
    in `quantize`, as the CLI spells them."""
    c = config
    return [flag for flag, on in (("--quantize " + str(c.quantize), c.quantize not in quantize),
                                  ("--per-example", c.per_example), ("--merge", c.merge), ("--ort-format", c.ort_format),
                                  ("--fuse", c.fused), ("--builder-option", c.builder_options),
                                  ("--exporter dynamo", c.exporter != "torchscript")) if on]
