"""The user file (`user.npz`): one user of a subspace, a few KB; its keys are the ONNX graph's input names.

A *user* is a set of coefficients — per module `<module>.coeff_A` (r, K) and `<module>.coeff_B` (K, r), float32 —
an optional task head (`head.weight_t` (in, labels), `head.bias` (labels,)) and `__meta__`, a 0-d unicode array of
JSON carrying the subspace fingerprint and the format version (docs/glossary in docs/architecture.md). Written as a
zip with fixed timestamps (bit-identical for the same values), read with allow_pickle=False. `conform_inputs` is
the one validator every path uses (export, runtime, .onnx_adapter): names, dtype, shape, finite and bounded values,
with exact zero-padding of a lower K' or r'. numpy only: the runtime uses it. Does not touch torch or ONNX.
"""

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.atomic import atomic_file
from edge_lorax.formats.errors import InputError

MAX_ABS = 1e4  # |coefficient| or |head value| above this is refused: trained and projected users stay below ~1e2
MAX_META_BYTES = 1 << 20  # __meta__ JSON (fingerprint, labels, settings): a few KB
MAX_ELEMENTS = 1 << 25  # numbers per user file (128 MB of float32): a 7B model's user is ~1e5, sources.npz ~1e7


class UserError(InputError):
    """A user file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class User:
    """One user: coefficients + optional head, bound to a subspace by its fingerprint."""

    fingerprint: str
    coefficients: dict  # "<module>.coeff_A" -> (r, K), "<module>.coeff_B" -> (K, r); per-example: a leading batch
    head: dict = field(default_factory=dict)  # "head.weight_t" (in, labels), "head.bias" (labels,)
    meta: dict = field(default_factory=dict)

    def modules(self) -> list:
        return sorted({names.split_key(k)[0] for k in self.coefficients})

    def pair(self, module: str) -> tuple:
        """(coeff_A (r, K), coeff_B (K, r)) of one module."""
        return (self.coefficients[names.coeff_name(module, names.COEFF_A)],
                self.coefficients[names.coeff_name(module, names.COEFF_B)])

    def inputs(self) -> dict:
        """Every tensor by graph input name (coefficients, then head): what a run binds for this user."""
        return {**self.coefficients, **self.head}

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.inputs().values())


def split_inputs(arrays: dict) -> tuple:
    """{input name: array} -> (coefficients, head)."""
    head = {k: v for k, v in arrays.items() if k.startswith(names.HEAD_PREFIX)}
    return {k: v for k, v in arrays.items() if k not in head}, head


# --------------------------------------------------------------------------------------------- head <-> tensors

def head_tensors(weight: np.ndarray, bias: np.ndarray | None) -> dict:
    """A Linear head's weight (labels, in) and bias (labels,) -> user tensors (weight pre-transposed: MatMul + Add)."""
    w_t = np.ascontiguousarray(np.asarray(weight, np.float32).T)  # (in, labels)
    b = np.zeros(w_t.shape[1], np.float32) if bias is None else np.asarray(bias, np.float32).copy()  # (labels,)
    return {names.HEAD_WEIGHT_T: w_t, names.HEAD_BIAS: b}


def head_weight(head: dict) -> tuple:
    """User head tensors -> (weight (labels, in), bias (labels,)), as a Linear layer holds them."""
    return np.ascontiguousarray(head[names.HEAD_WEIGHT_T].T), np.asarray(head[names.HEAD_BIAS])


# ------------------------------------------------------------------------------------------------ the file

def _write_member(zf: zipfile.ZipFile, name: str, arr: np.ndarray):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr, order="C"), allow_pickle=False)  # ascontiguousarray would make 0-d 1-d
    info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED  # npy headers are mostly padding: about a third of a small file
    zf.writestr(info, buf.getvalue())


def write_user(user: User, path, overwrite: bool = True) -> Path:
    """Deterministic .npz (loadable by np.load), written atomically by formats.atomic's one publish rule: without
    `overwrite`, an existing file (or one another process wrote meanwhile) is OutputExistsError, never replaced."""
    meta = {**user.meta, "fingerprint": user.fingerprint, "format_version": names.FORMAT_VERSION}
    arrays = {**{k: np.asarray(v, np.float32) for k, v in user.inputs().items()},
              names.META_KEY: np.array(json.dumps(meta, sort_keys=True))}
    with atomic_file(path, overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for key in sorted(arrays):
                _write_member(zf, key, arrays[key])
    return Path(path)


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple:
    """(shape, dtype, header bytes) from a member's .npy header, reading only the header (nothing else is inflated)."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"npy format version {version}")
        shape, _, dtype = read(f)
        return shape, dtype, f.tell()


def _check_members(path: Path, zf: zipfile.ZipFile):
    """Every member's declared shape, dtype and uncompressed size, before any array is decompressed: float32 tensors
    (a unicode __meta__) of at most MAX_ELEMENTS in all, each member exactly the size its header declares (no bytes
    dropped, no zip bomb)."""
    total = 0
    for info in zf.infolist():
        shape, dtype, header = _member_header(zf, info)
        count = int(np.prod(shape, dtype=np.float64))
        key = info.filename.removesuffix(".npy")
        if dtype.hasobject:
            raise UserError(f"{path}: holds pickled objects, which are never loaded; save plain float32 arrays")
        if key != names.META_KEY and dtype != np.float32:
            raise UserError(f"{path}: {key} is {dtype}, expected float32; re-save it with edge-lorax")
        total += count if key != names.META_KEY else 0
        if key == names.META_KEY and info.file_size > MAX_META_BYTES:  # one element, but of any length
            raise UserError(f"{path}: {key} declares {info.file_size:,} bytes unpacked (at most {MAX_META_BYTES:,}); "
                            "re-create the file with `edge-lorax project` or `edge-lorax train`")
        if total > MAX_ELEMENTS or info.file_size != header + count * dtype.itemsize:
            raise UserError(f"{path}: {key} declares {shape} in {info.file_size:,} bytes unpacked (a user holds at most "
                            f"{MAX_ELEMENTS:,} numbers, each member exactly its header's size); re-create the file with "
                            "`edge-lorax project` or `edge-lorax train`")


def _read_arrays(path: Path) -> dict:
    """Every member as an array; pickles, corrupt members, oversized members (checked from their headers before
    decompressing) and non-zip files are one UserError naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: no such user file; create one with `edge-lorax project` or `edge-lorax train`")
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle
        raise UserError(f"{path}: not an .npz file; create one with `edge-lorax project` or `edge-lorax train`")
    try:
        with zipfile.ZipFile(path) as zf:
            _check_members(path, zf)
    except UserError:
        raise
    except Exception as e:  # a damaged header raises anything from zlib.error to ValueError
        raise _corrupt(path, e) from e
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(f"{path}: holds pickled objects, which are never loaded; save plain float32 arrays") from e
        raise _corrupt(path, e) from e
    except Exception as e:  # a damaged member raises anything from zlib.error to tokenize.TokenError
        raise _corrupt(path, e) from e


def _corrupt(path: Path, e: Exception) -> UserError:
    return UserError(f"{path}: a member is damaged ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}); "
                     "re-create the file with `edge-lorax project` or `edge-lorax train`")


def _read_meta(path: Path, arrays: dict) -> dict:
    """__meta__ as a dict; absent, non-JSON, non-object, a format version from another edge-lorax (or not an integer)
    or labels that are not a list of class names are refused; an absent format_version is version 1."""
    if names.META_KEY not in arrays:
        raise UserError(f"{path}: no {names.META_KEY} entry (subspace fingerprint); save it with edge-lorax")
    raw = arrays.pop(names.META_KEY)
    try:
        meta = json.loads(str(raw)) if raw.dtype.kind == "U" and raw.ndim == 0 else None
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; RecursionError: absurdly nested JSON
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("fingerprint", ""), str):
        raise UserError(f"{path}: {names.META_KEY} is not a JSON object with a fingerprint string; re-save it with edge-lorax")
    version = meta.get("format_version", names.FORMAT_VERSION)  # absent: files written before the key existed
    if type(version) is not int or version != names.FORMAT_VERSION:
        raise UserError(f"{path}: format_version {meta.get('format_version')!r} is not {names.FORMAT_VERSION}, the one "
                        "this edge-lorax reads; re-create the user with this version")
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(
            isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in labels)):
        raise UserError(f"{path}: {names.META_KEY} labels is not a list of class names; re-save the user with edge-lorax")
    return meta


def read_user(path) -> User:
    """A user.npz: refuses pickles, damaged members, bad __meta__, unknown versions, non-float32 or unbounded tensors."""
    path = Path(path)
    arrays = _read_arrays(path)
    meta = _read_meta(path, arrays)
    for key, arr in arrays.items():
        _check_values(path, key, arr)
    coefficients, head = split_inputs(arrays)
    return User(meta.pop("fingerprint", ""), coefficients, head, meta)


# ------------------------------------------------------------------------------------------ the one validator

def _check_values(path, key: str, arr: np.ndarray):
    """float32, finite, |x| ≤ MAX_ABS: the value rules of every user, whatever path it takes."""
    if arr.dtype != np.float32:
        raise UserError(f"{path}: {key} is {arr.dtype}, expected float32; re-save it with edge-lorax")
    if not np.isfinite(arr).all():
        raise UserError(f"{path}: {key} holds NaN or Inf; retrain or re-project this user")
    if arr.size and float(np.abs(arr).max()) > MAX_ABS:
        raise UserError(f"{path}: {key} holds |values| up to {float(np.abs(arr).max()):.3g} > {MAX_ABS:g}; such a user is "
                        "broken, retrain or re-project it")


def fingerprint_version(fingerprint: str | None) -> int:
    """The subspace fingerprint as AdapterFormat's integer model_version (first 7 hex digits; 0 = no subspace):
    the format has no string metadata, and this keeps a user of another subspace from loading silently."""
    return int(fingerprint[:7], 16) if fingerprint else 0


def check_fingerprint(have, fingerprint: str, path="user", fix: str = "re-project or retrain the user on this subspace"):
    """The one fingerprint check of every path (export, run, generate, project, merge): refuse a user made for another
    subspace, whose numbers mean nothing on these components. `have`: a User, its fingerprint, or an .onnx_adapter's
    model_version (int: fingerprint_version of the subspace it was written for)."""
    if isinstance(have, int):
        same, shown = have == fingerprint_version(fingerprint), f"model_version {have:#x}"
        fingerprint = f"{fingerprint} (model_version {fingerprint_version(fingerprint):#x})"
    else:
        shown = have.fingerprint if isinstance(have, User) else str(have or "")
        same, shown = shown == fingerprint, shown or "(none)"
    if not same:
        raise UserError(f"{path}: made for subspace {shown}, this one is {fingerprint}; {fix}")


def _check_names(path, arrays: dict, expected: dict, where: str):
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise UserError(f"{path}: tensor {extra[0]} ({len(extra)} extra) is not an input of {where}; the user was made "
                        "for another model or subspace, re-project it for this one")
    coeffs, head = split_inputs(expected)
    missing = [n for n in coeffs if n not in arrays]
    if any(n in arrays for n in head):  # a head is all or nothing; none = the graph's default head
        missing += [n for n in head if n not in arrays]
    if missing:
        raise UserError(f"{path}: missing tensor {missing[0]} ({len(missing)} missing) that {where} needs; the file is "
                        "incomplete or for another subspace, re-project or retrain the user")


def _fmt(shape) -> tuple:
    return tuple("?" if d is None else d for d in shape)


def _pad_to(path, key: str, arr: np.ndarray, want: tuple, where: str) -> np.ndarray:
    """Zero-pad a coefficient of lower K' or r' to the expected shape (exact: the extra directions get weight 0)."""
    fits = len(want) == arr.ndim and all(w is None or h <= w for w, h in zip(want, arr.shape))
    if not fits or (key.startswith(names.HEAD_PREFIX) and any(w is not None and w != h for w, h in zip(want, arr.shape))):
        raise UserError(f"{path}: {key} has shape {tuple(arr.shape)}, {where} expects {_fmt(want)}; the user was made "
                        "with a larger K or r or another head, re-project or retrain it on this subspace")
    pad = [(0, 0 if w is None else w - h) for w, h in zip(want, arr.shape)]
    return np.pad(arr, pad) if any(p for _, p in pad) else arr


def _check_pairs(path, arrays: dict):
    """coeff_A (r', K') and coeff_B (K', r') of a module must agree, or zero-padding would change ΔW's meaning."""
    for key, ca in arrays.items():
        module, side = names.split_key(key)
        cb = arrays.get(names.coeff_name(module, names.COEFF_B)) if side == names.COEFF_A else None
        if cb is not None and tuple(cb.shape[-2:]) != tuple(ca.shape[-2:][::-1]):
            raise UserError(f"{path}: {module} coefficients are {tuple(ca.shape)} and {tuple(cb.shape)}; coeff_B must be "
                            "coeff_A transposed in shape, (r, K) and (K, r); re-project or retrain the user")


def conform_inputs(path, arrays: dict, expected: dict, where: str) -> dict:
    """The one validator: names, dtype, finite and bounded values, then shapes against `expected` ({name: shape},
    None = any size), a lower K' or r' zero-padded (exact). Returns the arrays to bind; UserError names file and fix."""
    _check_names(path, arrays, expected, where)
    out = {}
    for key, arr in arrays.items():
        _check_values(path, key, arr)
        out[key] = _pad_to(path, key, arr, tuple(expected[key]), where)
    _check_pairs(path, arrays)
    return out


def subspace_shapes(subspace, head: dict | None = None) -> dict:
    """{input name: shape} a user of `subspace` has: (r, K) / (K, r) per module, plus the given head's shapes."""
    out = {}
    for module, ms in sorted(subspace.modules.items()):
        out[names.coeff_name(module, names.COEFF_A)] = (ms.rank, ms.k)
        out[names.coeff_name(module, names.COEFF_B)] = (ms.k, ms.rank)
    out.update({k: tuple(v.shape) for k, v in (head or {}).items()})
    return out


def conform_user(user: User, subspace, path) -> User:
    """A user checked against its subspace (fingerprint, modules, shapes, values) and padded to its (r, K)."""
    check_fingerprint(user, subspace.fingerprint, path)
    arrays = conform_inputs(path, user.inputs(), subspace_shapes(subspace, user.head), f"subspace {subspace.fingerprint}")
    coefficients, head = split_inputs(arrays)
    return User(user.fingerprint, coefficients, head, user.meta)
