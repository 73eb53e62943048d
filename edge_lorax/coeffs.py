"""The coefficients file (`user.npz`): one user of a subspace, a few KB; its keys are the ONNX graph's input names.

Per module `<module>.coeff_A` (r, K) and `<module>.coeff_B` (K, r), float32; optional `head.*` tensors; and
`__meta__`, a 0-d unicode array of JSON carrying the subspace fingerprint. Written as a zip with fixed
timestamps (bit-identical for the same values), read with allow_pickle=False. numpy only: the runtime uses it.
"""

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_lorax import names
from edge_lorax.util import atomic_file


class CoeffsError(ValueError):
    """Bad coefficients input; the message names the file and the fix."""


@dataclass(frozen=True)
class Coefficients:
    fingerprint: str
    tensors: dict  # "<module>.coeff_A" -> (r, K), "<module>.coeff_B" -> (K, r); per-example files add a leading batch
    head: dict = field(default_factory=dict)  # "head.weight_t" (in, labels), "head.bias" (labels,)
    meta: dict = field(default_factory=dict)

    def modules(self) -> list:
        return sorted({names.split_key(k)[0] for k in self.tensors})

    def pair(self, module: str) -> tuple:
        """(coeff_A (r, K), coeff_B (K, r)) of one module."""
        return self.tensors[names.coeff_name(module, names.COEFF_A)], self.tensors[names.coeff_name(module, names.COEFF_B)]

    def feeds(self) -> dict:
        """Every tensor by graph input name: what ONNX Runtime is fed."""
        return {**self.tensors, **self.head}

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.feeds().values())


def _write_member(zf: zipfile.ZipFile, name: str, arr: np.ndarray):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr, order="C"), allow_pickle=False)  # ascontiguousarray would make 0-d 1-d
    info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED  # npy headers are mostly padding: about a third of a small file
    zf.writestr(info, buf.getvalue())


def save_coeffs(coeffs: Coefficients, path) -> Path:
    """Deterministic .npz (loadable by np.load); written to a temp file, then renamed."""
    meta = {**coeffs.meta, "fingerprint": coeffs.fingerprint, "format_version": names.FORMAT_VERSION}
    arrays = {**{k: np.asarray(v, np.float32) for k, v in coeffs.feeds().items()},
              names.META_KEY: np.array(json.dumps(meta, sort_keys=True))}
    with atomic_file(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for key in sorted(arrays):
                _write_member(zf, key, arrays[key])
    return Path(path)


def _check_tensor(path, key: str, arr: np.ndarray):
    if arr.dtype != np.float32:
        raise CoeffsError(f"{path}: {key} is {arr.dtype}, expected float32; re-save with edge-lorax")
    if not np.isfinite(arr).all():
        raise CoeffsError(f"{path}: {key} holds NaN or Inf; retrain or re-project this user")


def load_coeffs(path) -> Coefficients:
    """np.load(allow_pickle=False); refuses pickles, a missing __meta__, non-float32 or non-finite tensors."""
    path = Path(path)
    if not path.is_file():
        raise CoeffsError(f"{path}: no such coefficients file; create one with `edge-lorax project` or `edge-lorax train`")
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle
        raise CoeffsError(f"{path}: not an .npz file; create one with `edge-lorax project`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        raise CoeffsError(f"{path}: holds pickled objects, which are never loaded; save plain float32 arrays") from e
    except (OSError, zipfile.BadZipFile) as e:
        raise CoeffsError(f"{path}: not an .npz file ({e}); create one with `edge-lorax project`") from e
    if names.META_KEY not in arrays:
        raise CoeffsError(f"{path}: no {names.META_KEY} entry (subspace fingerprint); save it with edge-lorax")
    meta = json.loads(str(arrays.pop(names.META_KEY)))
    for key, arr in arrays.items():
        _check_tensor(path, key, arr)
    head = {k: v for k, v in arrays.items() if k.startswith(names.HEAD_PREFIX)}
    tensors = {k: v for k, v in arrays.items() if k not in head}
    return Coefficients(meta.pop("fingerprint", ""), tensors, head, meta)


def check_fingerprint(coeffs: Coefficients, fingerprint: str, path="coefficients"):
    """Refuse coefficients made for another subspace: their numbers mean nothing on these components."""
    if coeffs.fingerprint != fingerprint:
        raise CoeffsError(f"{path}: made for subspace {coeffs.fingerprint or '(none)'}, this one is {fingerprint}; "
                          "re-project or retrain the user on this subspace")
