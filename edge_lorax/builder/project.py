"""Move between LoRA adapters and coefficients: training-free projection, reconstruction, merged weights.

Projection is least squares onto orthonormal components: coeff_A = A·Cᴀᵀ, coeff_B = Cʙᵀ·B (scaling folded in).
Lower-rank sources are zero-padded to the subspace's rank r, which leaves ΔW unchanged. The adapter's modules are
matched to the subspace's by the one naming rule (edge_lorax.formats.peft.name_variants); its saved task head is
carried; an adapter whose ΔW is zero everywhere is refused as degenerate (a relative error would be 0/0).
A user keeps its PEFT task type: a projected adapter's `task_type` goes into the user's meta, and a reconstructed
adapter is SEQ_CLS when the user has a head, CAUSAL_LM when its meta says so (a decoder answering with label words,
as `edge-lorax train` writes it), else None (bare features).
"""

import csv
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_lorax.builder.executor import map_items
from edge_lorax.builder.models import CAUSAL_LM, SEQ_CLS, TASK_TYPES, canonical_base
from edge_lorax.formats import names
from edge_lorax.formats.atomic import atomic_dir
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.jsonfile import read_json_object
from edge_lorax.formats.peft import (
    AdapterError,
    align_modules,
    module_difference,
    read_adapter,
    read_factors,
    read_head,
    renamed,
    write_adapter,
)
from edge_lorax.formats.sources import stack_sources
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.user import User, check_fingerprint, head_weight, write_user


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


def _check_adapter(subspace: Subspace, info, allow_base_mismatch: bool = False):
    """The adapter under the subspace's module names (the one naming rule), or refused naming the first difference."""
    mapping = align_modules(info.modules, subspace.modules)
    if mapping is None:
        raise AdapterError(f"{info.path}: {module_difference(info.modules, subspace.modules, 'the adapter', 'the subspace')}; "
                           "project adapters of the subspace's target modules")
    if not allow_base_mismatch and canonical_base(info.base_model) != canonical_base(subspace.base_model):
        raise AdapterError(f"{info.path}: base model {info.base_model!r}, subspace built for {subspace.base_model!r}")
    return renamed(info, mapping)


def _training_labels(adapter_dir) -> dict:
    """{"labels": [...]} from the training.json `edge-lorax train-lora` leaves beside an adapter, else {}."""
    path = adapter_dir / names.TRAINING_JSON
    if not path.is_file():
        return {}
    labels = read_json_object(path, "re-run `edge-lorax train-lora` or delete it", AdapterError).get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise AdapterError(f"{path}: labels must be a list of strings; fix it or delete {names.TRAINING_JSON}")
    return {"labels": labels} if labels else {}


def _adapter_task_type(adapter_dir) -> dict:
    """{"task_type": ...} from the adapter's adapter_config.json when it is one of PEFT's SEQ_CLS / CAUSAL_LM, else {}."""
    cfg = read_json_object(adapter_dir / names.ADAPTER_CONFIG, "pass a folder written by PEFT's save_pretrained",
                           AdapterError)
    kind = cfg.get("task_type")
    return {"task_type": kind} if kind in TASK_TYPES else {}


def _squared_errors(A, B, CA, CB, ca0, cb0) -> tuple:
    """(‖ΔW − ΔŴ‖², ‖ΔW‖²) for ΔW = B·A and its projection ΔŴ = P_B·ΔW·P_A (P = the components' orthogonal
    projectors; what the zero-padded fit gives), from (r, r) products only: the residual splits into
    (I − P_B)·B·A and P_B·B·A·(I − P_A), which are orthogonal, so no (out, in) matrix is formed (a Llama-7B module:
    4096 x 4096 per adapter)."""
    gram_a = A @ A.T  # (r, r)
    b_out, a_out = B - CB @ cb0, A - ca0 @ CA  # (out, r), (r, in): the parts outside the components' spans
    n2 = float(np.sum((b_out.T @ b_out) * gram_a) + np.sum((cb0.T @ cb0) * (a_out @ a_out.T)))
    return n2, float(np.sum((B.T @ B) * gram_a))


def _squared_errors_dense(A, B, CA, CB, ca, cb) -> tuple:
    """(‖ΔW − ΔŴ‖², ‖ΔW‖²) with both (out, in) matrices formed: for a rank-truncated fit, not a projection."""
    dw, dw_hat = B @ A, CB @ cb @ ca @ CA  # (out, in)
    return float(np.square(dw - dw_hat).sum()), float(np.square(dw).sum())


def project_adapter(subspace: Subspace, adapter_dir, with_head: bool = True,
                    allow_base_mismatch: bool = False) -> Projection:
    """Training-free coefficients for an existing LoRA (+ its saved task head), with the relative ΔW error."""
    info = _check_adapter(subspace, read_adapter(adapter_dir), allow_base_mismatch)
    tensors, errors, num, den = {}, {}, 0.0, 0.0
    for module, ms in subspace.modules.items():
        A, B = read_factors(info, module)  # (r, in), (out, r)
        CA, CB = ms.components_A.astype(np.float64), ms.components_B.astype(np.float64)  # (K, in), (out, K)
        ca0, cb0 = A @ CA.T, CB.T @ B  # (r, K), (K, r)
        ca, cb = _fit_rank(ca0, cb0, ms.rank)
        n2, d2 = _squared_errors(A, B, CA, CB, ca0, cb0) if ca0.shape[0] <= ms.rank else _squared_errors_dense(
            A, B, CA, CB, ca, cb)
        errors[module], num, den = (n2 / d2) ** 0.5 if d2 else 0.0, num + n2, den + d2  # ΔW = 0 here: ΔŴ = 0 too
        tensors[names.coeff_name(module, names.COEFF_A)] = ca.astype(np.float32)
        tensors[names.coeff_name(module, names.COEFF_B)] = cb.astype(np.float32)
    if den == 0:
        raise AdapterError(f"{info.weights}: ΔW is zero in every module (lora_B all zero: an untrained or degenerate "
                           "adapter), so there is nothing to project; train it first")
    meta = {"source": info.path.name, "method": "projection", "base_model": subspace.base_model,
            **_training_labels(info.path), **_adapter_task_type(info.path)}
    head = read_head(info) if with_head else {}
    if head:
        meta["head_module"] = info.head_module.rsplit(".", 1)[-1]  # reconstruct saves it so ("score" on a Llama)
    return Projection(User(subspace.fingerprint, tensors, head, meta), errors, (num / den) ** 0.5)


def project_sources(subspace: Subspace, adapter_dirs, allow_base_mismatch: bool = False, executor=None) -> User:
    """Every source adapter's projection (heads left out), stacked in the given order under its folder name (a
    repeated name gets -2, -3, ...): the sources.npz that `build` keeps and bundles ship (formats.sources).
    executor: builder.executor.Executor, one task per adapter (None: here)."""
    task = functools.partial(_project_task, subspace, allow_base_mismatch, False)
    outcomes = map_items(task, list(adapter_dirs), executor)
    users = {name: o.value.coeffs for name, o in zip(_unique_names(adapter_dirs), outcomes)}
    return stack_sources(subspace.fingerprint, users)


def _unique_names(adapter_dirs) -> list:
    """Each adapter's folder name, a repeated one suffixed -2, -3, ... (in the given order)."""
    names_, seen = [], set()
    for adapter_dir in adapter_dirs:
        name, n = Path(adapter_dir).name, 1
        while name in seen:
            n += 1
            name = f"{Path(adapter_dir).name}-{n}"
        seen.add(name)
        names_.append(name)
    return names_


TABLE_COLUMNS = ("adapter", "name", "status", "output", "relative_error", "user_bytes", "adapter_bytes", "seconds",
                 "host", "error")


def _table_row(adapter_dir, name: str, outcome) -> dict:
    """One line of project-many's table: the projection's error and sizes, or the failure's one line."""
    weights = Path(adapter_dir) / names.ADAPTER_WEIGHTS
    row = {"adapter": str(adapter_dir), "name": name, "seconds": round(outcome.seconds, 4), "host": outcome.host,
           "adapter_bytes": weights.stat().st_size if weights.is_file() else None}
    if outcome.error:
        return {**row, "status": "failed", "output": None, "relative_error": None, "user_bytes": None,
                "error": outcome.error}
    return {**row, "status": "ok", "output": f"{name}.npz", "relative_error": round(outcome.value.overall, 6),
            "user_bytes": None, "error": None}  # the written file's size, set by project_many


def _write_table(rows: list, folder: Path):
    """projections.json (the rows) and projections.csv (same columns, in TABLE_COLUMNS order)."""
    (folder / "projections.json").write_text(json.dumps(rows, indent=1) + "\n")
    with open(folder / "projections.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def project_many(subspace: Subspace, adapter_dirs, out_dir, executor=None, allow_base_mismatch: bool = False,
                 overwrite: bool = False, progress=None) -> list:
    """A hub of LoRA adapters -> out_dir/<folder name>.npz each (project_adapter, head carried) plus
    projections.csv / projections.json: per adapter its relative ΔW error, the sizes of its user.npz and of its
    adapter_model.safetensors (file bytes both), seconds and host, or why it failed. A failing adapter is a row,
    never the end of the batch; the folder appears whole (atomic_dir), and not at all when every adapter failed
    (InputError naming the first failure). executor: builder.executor.Executor (one task per adapter). Returns the
    rows."""
    adapter_dirs = [Path(d) for d in adapter_dirs]
    task = functools.partial(_project_task, subspace, allow_base_mismatch, True)
    outcomes = map_items(task, adapter_dirs, executor, progress, raise_errors=False)
    rows = [_table_row(d, n, o) for d, n, o in zip(adapter_dirs, _unique_names(adapter_dirs), outcomes)]
    failed = [r for r in rows if r["status"] != "ok"]
    if rows and len(failed) == len(rows):  # nothing to publish: no folder a rerun would need --overwrite for
        raise InputError(f"no adapter could be projected ({len(rows)} failed), {out_dir} not written; the first: "
                         f"{failed[0]['error']}")
    with atomic_dir(out_dir, overwrite) as tmp:
        for row, outcome in zip(rows, outcomes):
            if row["status"] == "ok":
                row["user_bytes"] = write_user(outcome.value.coeffs, tmp / row["output"]).stat().st_size
        _write_table(rows, tmp)
    return rows


def _project_task(subspace: Subspace, allow_base_mismatch: bool, with_head: bool, adapter_dir) -> Projection:
    return project_adapter(subspace, adapter_dir, with_head, allow_base_mismatch)


def _adapter_head(adapter_dir) -> dict:
    """The task head a PEFT adapter saved in modules_to_save, as user.npz tensors ({} when it has none)."""
    return read_head(read_adapter(adapter_dir))


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


def _meta_head_module(coeffs: User) -> str:
    name = coeffs.meta.get("head_module")
    return name if isinstance(name, str) and name.isidentifier() else "classifier"


def peft_task_type(coeffs: User) -> str | None:
    """The PEFT task_type of a user's adapter: SEQ_CLS with a head, CAUSAL_LM when its meta says so, else None."""
    if coeffs.head:
        return SEQ_CLS
    return CAUSAL_LM if coeffs.meta.get("task_type") == CAUSAL_LM else None


def reconstruct_adapter(subspace: Subspace, coeffs: User, out_dir, overwrite=False, head_module=None):
    """A standard PEFT LoRA folder that PeftModel.from_pretrained loads; a task head goes in modules_to_save under
    `head_module` (None: the user's meta "head_module", else "classifier"; Llama/GPT-2 classifiers call it "score");
    the task type is `peft_task_type`'s (a CAUSAL_LM user loads as PeftModelForCausalLM)."""
    extra, save = {}, None
    if coeffs.head:
        head_module = head_module or _meta_head_module(coeffs)
        weight, bias = head_weight(coeffs.head)  # (labels, in), (labels,)
        extra = {f"{head_module}.weight": weight, f"{head_module}.bias": bias}
        save = [head_module]
    return write_adapter(out_dir, lora_factors(subspace, coeffs), subspace.base_model,
                         fan_in_fan_out=subspace.config.get("fan_in_fan_out", False), extra=extra,
                         modules_to_save=save, task_type=peft_task_type(coeffs), overwrite=overwrite)
