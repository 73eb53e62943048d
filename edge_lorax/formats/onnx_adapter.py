"""Write and read `<user>.onnx_adapter` (ONNX Runtime's AdapterFormat): one user's feeds, memory-mappable.

Activated with `ort.LoraAdapter().Load(path)` + `RunOptions.add_active_adapter`; its tensors are appended to a
run's feeds by name, so names must be optional graph inputs (input + default initializer).
Sharp edges (ORT 1.32): run_with_iobinding ignores adapters; an adapter silently overrides an explicit feed of the
same name. Reading refuses, in one line naming the file, a file ONNX Runtime cannot parse and an adapter_version
other than ADAPTER_VERSION. Does not validate against a graph (runtime.users and the exporter do).
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_lorax.formats.atomic import atomic_file
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.user import fingerprint_version

ADAPTER_VERSION = 1


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
    """({name: array}, model_version); copies each tensor (get_parameters() views dangle once their OrtValue is freed).
    An unparsable file or another adapter_version is an InputError naming the file."""
    try:
        fmt = ort.AdapterFormat.read_adapter(str(path))
        arrays = {k: np.array(v.numpy(), copy=True) for k, v in fmt.get_parameters().items()}
    except Exception as e:  # onnxruntime raises its own types
        raise InputError(f"{path}: not an ONNX Runtime adapter file ({str(e).splitlines()[0][:120] if str(e) else e!r}); "
                         "write one with `edge-lorax export --coeffs`") from e
    if fmt.get_adapter_version() != ADAPTER_VERSION:
        raise InputError(f"{path}: adapter_version {fmt.get_adapter_version()} is not {ADAPTER_VERSION}, the one this "
                         "edge-lorax reads; write it again with `edge-lorax export --coeffs`")
    return arrays, fmt.get_model_version()
