"""Users of a bundle: coefficients loaded from `user.npz` or `.onnx_adapter`, checked against the bundle, preloaded.

Everything is checked once, at load time — fingerprint, missing / extra / misshaped tensors, dtype, finite values —
and each failure is one line naming the file and the fix; a run never meets a bad user. A loaded User holds its
tensors as read-only, C-contiguous float32 arrays, so switching users only changes which arrays a run binds (ORT
wraps them without a copy; measured faster per run than binding prebuilt OrtValues through run_with_ort_values,
and no per-tensor OrtValue objects to keep per resident user). Does not run anything.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_lorax import names
from edge_lorax.coeffs import CoeffsError, load_coeffs
from edge_lorax.runtime.bundle import Bundle


class UserError(CoeffsError):
    """A user file that does not fit the bundle; the message names the file and the fix."""


@dataclass(frozen=True)
class User:
    """One preloaded user: validated arrays by graph input name, read-only (runs on many threads share them)."""

    name: str
    path: Path | None
    fingerprint: str
    arrays: dict = field(repr=False)  # input name -> read-only C-contiguous array
    adapter: object = field(default=None, repr=False)  # ort.LoraAdapter when loaded from .onnx_adapter
    run_options: object = field(default=None, repr=False)  # RunOptions with that adapter active (one per user)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def _per_user_shape(spec) -> tuple:
    return spec.shape[1:] if spec.per_example else spec.shape


def _shape_ok(want: tuple, have: tuple) -> bool:
    return len(want) == len(have) and all(w is None or w == h for w, h in zip(want, have))


def _check_names(bundle: Bundle, path, arrays: dict):
    extra = sorted(set(arrays) - set(bundle.coeff_inputs))
    if extra:
        raise UserError(f"{path}: tensor {extra[0]} ({len(extra)} extra) is not an input of bundle {bundle.path}; "
                        "the user was made for another model or subspace, re-project it for this one")
    coeff_names = [n for n in bundle.coeff_inputs if not n.startswith(names.HEAD_PREFIX)]
    head_names = [n for n in bundle.coeff_inputs if n.startswith(names.HEAD_PREFIX)]
    missing = [n for n in coeff_names if n not in arrays]
    if any(n in arrays for n in head_names):  # a head is all or nothing; none = the bundle's default head
        missing += [n for n in head_names if n not in arrays]
    if missing:
        raise UserError(f"{path}: missing tensor {missing[0]} ({len(missing)} missing) that bundle {bundle.path} "
                        "needs; the file is incomplete or for another subspace, re-project or retrain the user")


def _check_tensor(bundle: Bundle, path, key: str, arr: np.ndarray):
    spec = bundle.coeff_inputs[key]
    if arr.dtype != spec.dtype:
        raise UserError(f"{path}: {key} is {arr.dtype}, the bundle expects {np.dtype(spec.dtype)}; re-save it with edge-lorax")
    want = _per_user_shape(spec)
    if not _shape_ok(want, arr.shape):
        raise UserError(f"{path}: {key} has shape {tuple(arr.shape)}, the bundle expects "
                        f"{tuple('?' if d is None else d for d in want)}; the user was trained with another K or r, "
                        "re-project it on this subspace")
    if not np.isfinite(arr).all():
        raise UserError(f"{path}: {key} holds NaN or Inf; retrain or re-project this user")


def validate(bundle: Bundle, path, arrays: dict, fingerprint: str):
    """Every check the runtime makes on a user, in order: fingerprint, names, then dtype/shape/finite per tensor."""
    if bundle.fingerprint and fingerprint != bundle.fingerprint:
        raise UserError(f"{path}: made for subspace {fingerprint or '(none)'}, bundle {bundle.path} serves "
                        f"{bundle.fingerprint}; re-project or retrain the user on this bundle's subspace")
    _check_names(bundle, path, arrays)
    for key, arr in arrays.items():
        _check_tensor(bundle, path, key, arr)


def make_user(bundle: Bundle, arrays: dict, name: str = "user", fingerprint: str | None = None, path=None) -> User:
    """A User from in-memory arrays (validated like a file); fingerprint None means the bundle's own."""
    arrays = {k: np.array(v, order="C", copy=True) for k, v in arrays.items()}  # own copy: callers keep theirs
    fp = bundle.fingerprint if fingerprint is None else fingerprint
    validate(bundle, path or f"<{name}>", arrays, fp)
    shared = {k: k for k in bundle.coeff_inputs}  # the bundle's key strings: ~2.5 KB less per resident user
    arrays = {shared[k]: v for k, v in arrays.items()}
    for arr in arrays.values():
        arr.flags.writeable = False
    return User(name, Path(path) if path else None, fp, arrays)


def _read_adapter(bundle: Bundle, path: Path) -> dict:
    """The adapter's tensors, refused unless its model_version is this bundle's subspace (fingerprint_version)."""
    from edge_lorax.export.adapter_file import fingerprint_version, read_onnx_adapter

    try:
        arrays, version = read_onnx_adapter(path)
    except Exception as e:  # onnxruntime raises its own types
        raise UserError(f"{path}: not an ONNX Runtime adapter file ({str(e).splitlines()[0][:120]}); "
                        "write one with `edge-lorax export --coeffs`") from e
    if version != fingerprint_version(bundle.fingerprint):
        raise UserError(f"{path}: made for another subspace (model_version {version:#x}, this bundle's is "
                        f"{fingerprint_version(bundle.fingerprint):#x}); re-export the user for this bundle")
    return arrays


def load_adapter_user(bundle: Bundle, path, name: str | None = None) -> User:
    """A user from an `.onnx_adapter` file: validated like an npz, plus ORT's memory-mapped LoraAdapter path."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such adapter file; write one with `edge-lorax export --coeffs`")
    user = make_user(bundle, _read_adapter(bundle, path), name or path.stem, bundle.fingerprint, path)
    adapter = ort.LoraAdapter()
    adapter.Load(str(path))
    run_options = ort.RunOptions()
    run_options.add_active_adapter(adapter)
    return User(user.name, path, user.fingerprint, user.arrays, adapter, run_options)


def load_user(bundle: Bundle, path, name: str | None = None) -> User:
    """A user from `user.npz` (pickles refused) or `.onnx_adapter`, checked against the bundle now, not at run time."""
    path = Path(path)
    if path.suffix == names.ADAPTER_SUFFIX:
        return load_adapter_user(bundle, path, name)
    coeffs = load_coeffs(path)
    return make_user(bundle, coeffs.feeds(), name or path.stem, coeffs.fingerprint, path)
