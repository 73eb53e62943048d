"""Users of a bundle: a user file (`user.npz` or `.onnx_adapter`) checked against the bundle and preloaded.

Everything is checked once, at load time, by the formats layer's one validator (`conform_inputs`): fingerprint,
missing / extra / misshaped tensors, dtype, finite and bounded values; a lower K' or r' is zero-padded (exact).
Each failure is one line naming the file and the fix; a run never meets a bad user. A LoadedUser holds its tensors
as read-only, C-contiguous float32 arrays, so switching users only changes which arrays a run binds (ORT wraps
them without a copy; measured faster per run than binding prebuilt OrtValues through run_with_ort_values, and no
per-tensor OrtValue objects to keep per resident user). Does not run anything.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError, MissingInputError
from edge_lorax.formats.onnx_adapter import read_onnx_adapter
from edge_lorax.formats.user import UserError, check_fingerprint, conform_inputs, read_user
from edge_lorax.runtime.bundle import Bundle

__all__ = ["LoadedUser", "UserError", "load_user", "make_user"]


@dataclass(frozen=True)
class LoadedUser:
    """One user loaded into a bundle: validated arrays by graph input name, read-only (runs on many threads share
    them); `labels` are the user's own class names (None: the bundle's)."""

    name: str
    path: Path | None
    fingerprint: str
    arrays: dict = field(repr=False)  # input name -> read-only C-contiguous array
    adapter: object = field(default=None, repr=False)  # ort.LoraAdapter when loaded from .onnx_adapter
    run_options: object = field(default=None, repr=False)  # RunOptions with that adapter active (one per user)
    labels: tuple | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def _expected(bundle: Bundle) -> dict:
    """{input name: per-user shape}: a per-example graph's leading batch dim is the run's, not the user's."""
    return {k: (s.shape[1:] if s.per_example else s.shape) for k, s in bundle.coeff_inputs.items()}


def _labels(bundle: Bundle, arrays: dict, labels) -> tuple | None:
    """The user's own class names when it has its own head of that many classes; None otherwise."""
    bias = arrays.get(names.HEAD_BIAS)
    if not labels or bias is None or not isinstance(labels, (list, tuple)) or len(labels) != bias.shape[-1]:
        return None
    return tuple(str(x) for x in labels)


def make_user(bundle: Bundle, arrays: dict, name: str = "user", fingerprint: str | None = None, path=None,
              labels=None) -> LoadedUser:
    """A LoadedUser from in-memory arrays (validated like a file); fingerprint None means the bundle's own."""
    fp = bundle.fingerprint if fingerprint is None else fingerprint
    where = path or f"<{name}>"
    if not isinstance(arrays, dict):
        raise UserError(f"{where}: a user is a dict of arrays by graph input name, got {type(arrays).__name__}")
    check_fingerprint(fp, bundle.fingerprint, where)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    arrays = conform_inputs(where, arrays, _expected(bundle), f"bundle {bundle.path}")
    shared = {k: k for k in bundle.coeff_inputs}  # the bundle's key strings: ~2.5 KB less per resident user
    arrays = {shared[k]: np.array(v, order="C", copy=True) for k, v in arrays.items()}  # own copy: callers keep theirs
    for arr in arrays.values():
        arr.flags.writeable = False
    return LoadedUser(name, Path(path) if path else None, fp, arrays, labels=_labels(bundle, arrays, labels))


def _read_adapter(bundle: Bundle, path: Path) -> dict:
    """The adapter's tensors, refused unless its model_version is this bundle's subspace (fingerprint_version)."""
    try:
        arrays, version = read_onnx_adapter(path)
    except InputError as e:
        raise UserError(str(e)) from e
    check_fingerprint(version, bundle.fingerprint, path)
    return arrays


def _load_adapter_user(bundle: Bundle, path, name: str | None = None) -> LoadedUser:
    """A user from an `.onnx_adapter` file: validated like an npz, plus ORT's memory-mapped LoraAdapter path."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such adapter file; write one with `edge-lorax export --coeffs`")
    raw = _read_adapter(bundle, path)
    user = make_user(bundle, raw, name or path.stem, bundle.fingerprint, path)
    if any(user.arrays[k].shape != raw[k].shape for k in raw):
        raise UserError(f"{path}: its tensors need zero-padding for this bundle, which ORT's LoraAdapter cannot do; "
                        "re-export the user with `edge-lorax export --coeffs` for this bundle")
    adapter = ort.LoraAdapter()
    try:
        adapter.Load(str(path))
    except Exception as e:  # onnxruntime raises its own types
        raise UserError(f"{path}: ONNX Runtime cannot load it as a LoraAdapter ({str(e).splitlines()[0][:120] if str(e) else e!r}); "
                        "write it again with `edge-lorax export --coeffs`") from e
    run_options = ort.RunOptions()
    run_options.add_active_adapter(adapter)
    return LoadedUser(user.name, path, user.fingerprint, user.arrays, adapter, run_options)


def load_user(bundle: Bundle, path, name: str | None = None) -> LoadedUser:
    """A user from `user.npz` (pickles refused) or `.onnx_adapter`, checked against the bundle now, not at run time;
    the user's own class names (__meta__ labels) come with it."""
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"load_user needs a user file path (user.npz or {names.ADAPTER_SUFFIX}), got {type(path).__name__}")
    path = Path(path)
    if path.suffix == names.ADAPTER_SUFFIX:
        return _load_adapter_user(bundle, path, name)
    user = read_user(path)
    return make_user(bundle, user.inputs(), name or path.stem, user.fingerprint, path, user.meta.get("labels"))
