"""Write and read `<user>.onnx_adapter` (ONNX Runtime's AdapterFormat): one user's feeds, memory-mappable.

Activated with `ort.LoraAdapter().Load(path)` + `RunOptions.add_active_adapter`; its tensors are appended to a
run's feeds by name, so names must be optional graph inputs (input + default initializer).
Sharp edges (ORT 1.32): run_with_iobinding ignores adapters; an adapter silently overrides an explicit feed of the
same name. Does not validate against a graph (the bundle exporter does).
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_lorax.formats.atomic import atomic_file

ADAPTER_VERSION = 1


def fingerprint_version(fingerprint: str | None) -> int:
    """The subspace fingerprint as AdapterFormat's integer model_version (first 7 hex digits; 0 = no subspace):
    the format has no string metadata, and this keeps a user of another subspace from loading silently."""
    return int(fingerprint[:7], 16) if fingerprint else 0


def write_onnx_adapter(feeds: dict, path, fingerprint: str | None = None) -> Path:
    """{input name: float32 array} -> adapter file, written atomically; OrtValues kept alive until written."""
    values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[k], dtype=np.float32)) for k in sorted(feeds)}
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(ADAPTER_VERSION)
    fmt.set_model_version(fingerprint_version(fingerprint))
    fmt.set_parameters(values)
    with atomic_file(path) as tmp:
        fmt.export_adapter(str(tmp))
    return Path(path)


def read_onnx_adapter(path) -> tuple[dict, int]:
    """({name: array}, model_version); copies each tensor (get_parameters() views dangle once their OrtValue is freed)."""
    fmt = ort.AdapterFormat.read_adapter(str(path))
    return {k: np.array(v.numpy(), copy=True) for k, v in fmt.get_parameters().items()}, fmt.get_model_version()
