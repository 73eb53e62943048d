"""Read safetensors files of every format: a truncated, empty or garbage file is one line naming it, never a traceback.

`read_safetensors` loads a whole (small) file; `read_header` parses the header only ({name: (dtype, shape)});
`read_tensors` memory-maps the named tensors, bfloat16 (which numpy lacks) widened to float32 exactly. Does not
write files and does not judge what the tensors mean (each format's reader does).
"""

import json
from pathlib import Path

import numpy as np

from edge_lorax.formats.errors import InputError

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtype names of floating-point tensors


def _safetensors_error(path, e: Exception, fix: str, error=InputError) -> InputError:
    """The one message for a safetensors file that cannot be parsed."""
    return error(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120] or type(e).__name__}); {fix}")


def read_safetensors(path, fix: str, error=InputError) -> dict:
    """{name: numpy array} of the whole file; any parse failure raises `error` naming the file."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(Path(path)))
    except Exception as e:  # safetensors raises SafetensorError, OSError, ValueError... depending on the defect
        raise _safetensors_error(path, e, fix, error) from e


def read_header(path, fix: str, error=InputError) -> dict:
    """{name: (dtype, shape)} from the header alone (the data is not read); a bad file raises `error` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as e:  # SafetensorError (truncated, zero-byte, garbage header), OSError
        raise _safetensors_error(path, e, fix, error) from e


def read_tensors(path, keys, fix: str, error=InputError) -> dict:
    """{key: array} for the named tensors only; bfloat16 comes back as float32 (exact)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: _bf16(path, k) if f.get_slice(k).get_dtype() == "BF16" else f.get_tensor(k) for k in keys}
    except Exception as e:
        raise _safetensors_error(path, e, fix, error) from e


def _bf16(path, key: str) -> np.ndarray:
    """One bfloat16 tensor widened to float32 from its raw bytes (the header was validated by safe_open)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        entry = json.loads(fh.read(n))[key]
        start, end = entry["data_offsets"]
        fh.seek(8 + n + start)
        raw = np.frombuffer(fh.read(end - start), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])
