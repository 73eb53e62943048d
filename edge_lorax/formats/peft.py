"""Read and write PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors).

Reads lazily: `read_adapter` parses only the config and the safetensors header; `read_factors` memory-maps one
module's A and B. Never unpickles: `.bin` adapters are refused with the conversion to run.
Does not handle DoRA, non-LoRA PEFT types, embedding or conv LoRA.
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from edge_lorax.formats.errors import InputError
from edge_lorax.formats.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS

PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])(?:\.default)?\.weight$")


class AdapterError(InputError):
    """Bad adapter input; the message names the file and the fix."""


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    base_model: str
    modules: tuple[str, ...]  # target module names, sorted, without the PEFT prefix
    ranks: dict  # module -> r
    scalings: dict  # module -> lora scaling (alpha/r or alpha/sqrt(r))
    shapes: dict  # module -> (out, in)
    fan_in_fan_out: bool
    sha256: str


def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    """PEFT's rule, the only one used here: alpha/sqrt(r) with rslora, else alpha/r."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches the module name or any dotted suffix of it."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def file_sha256(path: Path) -> str:
    """Content hash, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_config(path: Path) -> dict:
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise AdapterError(f"{path}: no {ADAPTER_CONFIG}; pass a folder written by PEFT's save_pretrained")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type {cfg.get('peft_type')} is not LORA; only LoRA adapters can be recycled")
    if cfg.get("use_dora"):
        raise AdapterError(f"{cfg_path}: DoRA adapter (use_dora=true); its magnitude vector has no place in a LoRA subspace, use plain LoRA")
    return cfg


def _weights_file(path: Path) -> Path:
    weights = path / ADAPTER_WEIGHTS
    if weights.is_file():
        return weights
    if (path / "adapter_model.bin").is_file():
        raise AdapterError(f"{path / 'adapter_model.bin'}: pickled weights are never loaded; convert with "
                           "`PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)`")
    raise AdapterError(f"{path}: no {ADAPTER_WEIGHTS}; pass a folder written by PEFT's save_pretrained")


def _module_shapes(weights: Path) -> dict:
    """module -> {"A": shape, "B": shape} from the safetensors header only."""
    found: dict = {}
    with safe_open(weights, framework="numpy") as f:
        for key in f.keys():
            m = _KEY.match(key)
            if m:
                found.setdefault(m["module"], {})[m["side"]] = tuple(f.get_slice(key).get_shape())
    if not found:
        raise AdapterError(f"{weights}: no lora_A/lora_B weights; is this a LoRA adapter saved by PEFT?")
    return found


def read_adapter(path) -> AdapterInfo:
    """Config + header only; refuses DoRA, non-LoRA, .bin pickles, missing files, A/B rank disagreement."""
    path = Path(path)
    cfg = _read_config(path)
    weights = _weights_file(path)
    ranks, scalings, shapes = {}, {}, {}
    for module, sides in sorted(_module_shapes(weights).items()):
        if set(sides) != {"A", "B"} or sides["A"][0] != sides["B"][1]:
            raise AdapterError(f"{weights}: module {module} has lora shapes {sides}; A must be (r, in) and B (out, r)")
        r = sides["A"][0]
        alpha = pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
        ranks[module], shapes[module] = r, (sides["B"][0], sides["A"][1])
        scalings[module] = lora_scaling(alpha, r, cfg.get("use_rslora", False))
    return AdapterInfo(path, cfg.get("base_model_name_or_path") or "", tuple(ranks), ranks, scalings, shapes,
                       bool(cfg.get("fan_in_fan_out", False)), file_sha256(weights))


def _get_tensor(f, weights: Path, key: str) -> np.ndarray:
    """One tensor as numpy; bfloat16 (which numpy lacks) is widened to float32 exactly from the raw bytes."""
    if f.get_slice(key).get_dtype() != "BF16":
        return f.get_tensor(key)
    with open(weights, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        entry = json.loads(fh.read(n))[key]
        start, end = entry["data_offsets"]
        fh.seek(8 + n + start)
        raw = np.frombuffer(fh.read(end - start), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def read_factors(info: AdapterInfo, module: str) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) in float64 with sqrt(scaling) folded into each, so B @ A is the adapter's full ΔW (out, in)."""
    prefix = PEFT_PREFIX + module
    with safe_open(info.path / ADAPTER_WEIGHTS, framework="numpy") as f:
        keys = set(f.keys())
        a_key = next(k for k in (f"{prefix}.lora_A.weight", f"{prefix}.lora_A.default.weight") if k in keys)
        b_key = a_key.replace("lora_A", "lora_B")
        A = _get_tensor(f, info.path / ADAPTER_WEIGHTS, a_key).astype(np.float64)  # (r, in)
        B = _get_tensor(f, info.path / ADAPTER_WEIGHTS, b_key).astype(np.float64)  # (out, r)
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise AdapterError(f"{info.path / ADAPTER_WEIGHTS}: NaN or Inf in {module}; retrain or drop this adapter")
    root = math.sqrt(info.scalings[module])
    return A * root, B * root


def delta_weight(info: AdapterInfo, module: str) -> np.ndarray:
    """ΔW (out, in) as PEFT merges it (before any fan_in_fan_out transpose)."""
    A, B = read_factors(info, module)
    return B @ A  # (out, in)


def write_adapter(path, factors: dict, base_model: str, *, fan_in_fan_out=False, extra: dict | None = None,
                  modules_to_save=None, task_type=None, overwrite=False) -> Path:
    """A PEFT LoRA folder from {module: (A (r, in), B (out, r))} with scaling 1 (lora_alpha = r per module)."""
    from safetensors.numpy import save_file

    from edge_lorax.formats.atomic import atomic_dir

    ranks = {m: int(a.shape[0]) for m, (a, _) in factors.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    tensors = {}
    for m, (a, b) in factors.items():
        tensors[f"{PEFT_PREFIX}{m}.lora_A.weight"] = np.ascontiguousarray(a, np.float32)
        tensors[f"{PEFT_PREFIX}{m}.lora_B.weight"] = np.ascontiguousarray(b, np.float32)
    tensors.update({f"{PEFT_PREFIX}{k}": np.ascontiguousarray(v, np.float32) for k, v in (extra or {}).items()})
    pattern = {f"^{re.escape(m)}": v for m, v in ranks.items() if v != r}  # anchored: PEFT matches suffixes
    config = {"peft_type": "LORA", "base_model_name_or_path": base_model, "r": r, "lora_alpha": r,
              "rank_pattern": pattern, "alpha_pattern": pattern, "target_modules": sorted(factors),
              "fan_in_fan_out": fan_in_fan_out, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
              "use_dora": False, "modules_to_save": modules_to_save, "task_type": task_type, "inference_mode": True}
    with atomic_dir(path, overwrite) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(path)
