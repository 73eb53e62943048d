"""Write and read `<user>.onnx_adapter` (ONNX Runtime's AdapterFormat): one user's feeds, memory-mappable.

Activated with `ort.LoraAdapter().Load(path)` + `RunOptions.add_active_adapter`; its tensors are appended to a
run's feeds by name, so names must be optional graph inputs (input + default initializer).
Sharp edges (ORT 1.32): run_with_iobinding ignores adapters; an adapter silently overrides an explicit feed of the
same name. Reading refuses, in one line naming the file, a file ONNX Runtime cannot parse and an adapter_version
other than ADAPTER_VERSION. Does not validate against a graph (runtime.users and the exporter do).
"""

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_lorax.formats.atomic import atomic_file
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.user import fingerprint_version

ADAPTER_VERSION = 1


def _export(feeds: dict, fingerprint: str | None, path: str):
    """AdapterFormat of the feeds written to `path`; the OrtValues stay alive until it is written."""
    values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[k], dtype=np.float32)) for k in sorted(feeds)}
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(ADAPTER_VERSION)
    fmt.set_model_version(fingerprint_version(fingerprint))
    fmt.set_parameters(values)
    fmt.export_adapter(path)


def write_onnx_adapter(feeds: dict, path, fingerprint: str | None = None) -> Path:
    """{input name: float32 array} -> adapter file, written atomically."""
    with atomic_file(path) as tmp:
        _export(feeds, fingerprint, str(tmp))
    return Path(path)


@contextlib.contextmanager
def unnamed_onnx_adapter(feeds: dict, fingerprint: str | None = None):
    """Yield the path of an adapter file that has no name on disk (Linux O_TMPFILE, opened as /proc/self/fd/N) and is
    gone when the block ends: a loader that maps it keeps it alive, and no kill, even SIGKILL, leaves a copy of the
    user's coefficients behind. Where O_TMPFILE is missing, a named temp file removed at the end of the block."""
    try:
        fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
        path, named = f"/proc/self/fd/{fd}", None
    except (AttributeError, OSError):  # not Linux, or a file system without O_TMPFILE
        fd, named = tempfile.mkstemp(suffix=".onnx_adapter")
        path = named
    try:
        _export(feeds, fingerprint, path)
        yield path
    finally:
        os.close(fd)
        if named is not None:
            os.unlink(named)


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
