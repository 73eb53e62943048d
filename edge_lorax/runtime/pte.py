"""A user file as the ordered inputs of an ExecuTorch bundle's program (`target: executorch`), without torch.

An ExecuTorch method binds its inputs by position: the token inputs (`input_ids`, `attention_mask`, int64
(batch, sequence)), then the user's tensors in the manifest's `user_inputs` order. `user_tensors` reads a user.npz
or `.onnx_adapter`, validates it with the one validator (formats.user: fingerprint, names, float32, finite and
bounded values, shapes; a lower K' or r' zero-padded) and fills a head the user lacks from the bundle's
`defaults.npz`; `method_inputs` puts tokens and those tensors in the method's order. What an app does on the device
with ExecuTorch's C++ / Kotlin / Swift runtime is the same, per docs/bundle.md ("ExecuTorch"): load the program once,
set the user's tensors, execute. Does not run the program (ExecuTorch does; its Python binding imports torch, so
this project calls it only on the export side and in tests).
"""

from pathlib import Path

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.bundle import TARGET_EXECUTORCH, check_target, read_manifest, user_input_shapes, user_inputs
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.onnx_adapter import read_onnx_adapter
from edge_lorax.formats.user import check_fingerprint, conform_inputs, read_user

__all__ = ["pte_manifest", "user_tensors", "method_inputs"]


def pte_manifest(bundle) -> dict:
    """The manifest of an ExecuTorch bundle folder; BundleError for any other target (one line naming it)."""
    manifest = read_manifest(bundle)
    check_target(bundle, manifest, (TARGET_EXECUTORCH,), "this reader binds .pte programs (--target executorch); serve "
                                                         "ONNX bundles with edge_lorax.runtime.open_bundle")
    return manifest


def _read(path: Path, fingerprint: str) -> tuple:
    """({input name: array}, labels or None) of a user.npz or .onnx_adapter, its subspace checked."""
    if path.suffix == names.ADAPTER_SUFFIX:
        arrays, version = read_onnx_adapter(path)
        check_fingerprint(version, fingerprint, path)
        return arrays, None
    user = read_user(path)
    check_fingerprint(user, fingerprint, path)
    return user.inputs(), user.meta.get("labels")


def user_tensors(bundle, path) -> list:
    """The user's float32 arrays in the manifest's user_inputs order (one user: (r, K), (K, r), head (in, L), (L,)).
    A user without a head gets the bundle's default head (defaults.npz). UserError naming the file for a user of
    another subspace, a missing or extra tensor, a larger shape or a bad value."""
    bundle, path = Path(bundle), Path(path)
    manifest = pte_manifest(bundle)
    arrays, _ = _read(path, manifest["fingerprint"])
    shapes = user_input_shapes(manifest)
    arrays = conform_inputs(path, arrays, shapes, f"bundle {bundle}")
    missing = [n for n in shapes if n not in arrays]
    if missing:  # only a head can be absent (conform_inputs refuses missing coefficients): the bundle's default head
        defaults = read_user(bundle / manifest["files"]["defaults"]).inputs()
        arrays.update({n: defaults[n] for n in missing})
    return [np.ascontiguousarray(arrays[spec["name"]], np.float32) for spec in user_inputs(manifest)]


def method_inputs(bundle, tokens: dict, tensors: list) -> list:
    """[input_ids, attention_mask, *tensors]: the method's positional inputs (tokens int64 (batch, sequence))."""
    manifest = pte_manifest(bundle)
    token_names = [s["name"] for s in manifest["inputs"][: len(manifest["inputs"]) - len(manifest["user_inputs"])]]
    if len(tensors) != len(manifest["user_inputs"]):
        raise InputError(f"{len(tensors)} user tensors for {len(manifest['user_inputs'])} user inputs of {bundle}; "
                         "pass runtime.pte.user_tensors(bundle, user_file)")
    return [np.ascontiguousarray(tokens[n], np.int64) for n in token_names] + list(tensors)
