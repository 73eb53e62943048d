"""Move between LoRA adapters and coefficients: training-free projection, reconstruction, merged weights.

Projection is least squares onto orthonormal components: coeff_A = A·Cᴀᵀ, coeff_B = Cʙᵀ·B (scaling folded in).
Lower-rank sources are zero-padded to the subspace's rank r, which leaves ΔW unchanged.
"""

from dataclasses import dataclass

import numpy as np

from edge_lorax.builder.models import canonical_base
from edge_lorax.formats import names
from edge_lorax.formats.peft import AdapterError, read_adapter, read_factors, write_adapter
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.user import User, check_fingerprint, head_tensors, head_weight


@dataclass(frozen=True)
class Projection:
    coeffs: User
    errors: dict  # module -> ||ΔW - ΔŴ||_F / ||ΔW||_F
    overall: float  # sqrt(Σ num²) / sqrt(Σ den²) over all modules


def _pad(arr: np.ndarray, rank: int, axis: int) -> np.ndarray:
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, rank - arr.shape[axis])
    return np.pad(arr, pad)


def _fit_rank(ca: np.ndarray, cb: np.ndarray, rank: int) -> tuple:
    """(r_src, K), (K, r_src) -> (rank, K), (K, rank): zero-padded when r_src ≤ rank (ΔW unchanged); otherwise the
    best rank-`rank` approximation of cb @ ca (truncated SVD; optimal in Frobenius norm for ΔW too, since the
    components are orthonormal)."""
    if ca.shape[0] <= rank:
        return _pad(ca, rank, 0), _pad(cb, rank, 1)
    U, S, Vt = np.linalg.svd(cb @ ca)  # (K, K)
    root = np.sqrt(S[:rank])
    return root[:, None] * Vt[:rank], U[:, :rank] * root


def _check_adapter(subspace: Subspace, info):
    if set(info.modules) != set(subspace.modules):
        raise AdapterError(f"{info.path}: targets {len(info.modules)} modules, the subspace {len(subspace.modules)}; "
                           "project adapters of the same target modules")
    if canonical_base(info.base_model) != canonical_base(subspace.base_model):
        raise AdapterError(f"{info.path}: base model {info.base_model!r}, subspace built for {subspace.base_model!r}")


def _training_labels(adapter_dir) -> dict:
    """{"labels": [...]} from the training.json `edge-lorax train-lora` leaves beside an adapter, else {}."""
    import json

    path = adapter_dir / names.TRAINING_JSON
    labels = json.loads(path.read_text()).get("labels") if path.is_file() else None
    return {"labels": labels} if labels else {}


def project_adapter(subspace: Subspace, adapter_dir, with_head: bool = True) -> Projection:
    """Training-free coefficients for an existing LoRA (+ its saved task head), with the relative ΔW error."""
    info = read_adapter(adapter_dir)
    _check_adapter(subspace, info)
    tensors, errors, num, den = {}, {}, 0.0, 0.0
    for module, ms in subspace.modules.items():
        A, B = read_factors(info, module)  # (r, in), (out, r)
        ca, cb = _fit_rank(A @ ms.components_A.T.astype(np.float64), ms.components_B.T.astype(np.float64) @ B, ms.rank)
        dw, dw_hat = B @ A, ms.components_B @ cb @ ca @ ms.components_A  # (out, in)
        n2, d2 = float(np.square(dw - dw_hat).sum()), float(np.square(dw).sum())
        errors[module], num, den = (n2 / d2) ** 0.5 if d2 else 0.0, num + n2, den + d2
        tensors[names.coeff_name(module, names.COEFF_A)] = ca.astype(np.float32)
        tensors[names.coeff_name(module, names.COEFF_B)] = cb.astype(np.float32)
    meta = {"source": info.path.name, "method": "projection", "base_model": subspace.base_model,
            **_training_labels(info.path)}
    head = adapter_head(adapter_dir) if with_head else {}
    return Projection(User(subspace.fingerprint, tensors, head, meta), errors, (num / den) ** 0.5 if den else 0.0)


def adapter_head(adapter_dir, head_module: str = "classifier") -> dict:
    """The task head a PEFT adapter saved in modules_to_save, as user.npz tensors ({} when it has none)."""
    from safetensors import safe_open

    from edge_lorax.formats.names import ADAPTER_WEIGHTS

    prefix = f"base_model.model.{head_module}."
    with safe_open(f"{adapter_dir}/{ADAPTER_WEIGHTS}", framework="numpy") as f:
        found = {k.removeprefix(prefix): f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    if {"weight", "bias"} - set(found):
        return {}
    return head_tensors(found["weight"], found["bias"])


def lora_factors(subspace: Subspace, coeffs: User) -> dict:
    """{module: (lora_A (r, in), lora_B (out, r))} with scaling 1: lora_A = coeff_A @ Cᴀ, lora_B = Cʙ @ coeff_B."""
    check_fingerprint(coeffs, subspace.fingerprint)
    out = {}
    for module, ms in subspace.modules.items():
        ca, cb = coeffs.pair(module)  # (r, K'), (K', r); K' may be a prefix of K
        k = ca.shape[1]
        out[module] = (ca @ ms.components_A[:k], ms.components_B[:, :k] @ cb)
    return out


def delta_weights(subspace: Subspace, coeffs: User) -> dict:
    """{module: ΔW (out, in)} in float32."""
    return {m: b @ a for m, (a, b) in lora_factors(subspace, coeffs).items()}


def reconstruct_adapter(subspace: Subspace, coeffs: User, out_dir, overwrite=False, head_module="classifier"):
    """A standard PEFT LoRA folder that PeftModel.from_pretrained loads; a task head goes in modules_to_save."""
    extra, save = {}, None
    if coeffs.head:
        weight, bias = head_weight(coeffs.head)  # (labels, in), (labels,)
        extra = {f"{head_module}.weight": weight, f"{head_module}.bias": bias}
        save = [head_module]
    return write_adapter(out_dir, lora_factors(subspace, coeffs), subspace.base_model,
                         fan_in_fan_out=subspace.config.get("fan_in_fan_out", False), extra=extra,
                         modules_to_save=save, task_type="SEQ_CLS" if coeffs.head else None, overwrite=overwrite)
