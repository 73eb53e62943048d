"""`edge-lorax inspect`: a summary dict of a subspace folder, a coefficients file, a PEFT adapter or a bundle.

Reads through the formats layer's readers, so whatever they refuse is refused here in the same line; an adapter's
summary counts every tensor it read (LoRA factors and the carried head). Does not modify anything.
"""

from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.bundle import TARGET_DECODER, bundle_file, read_manifest
from edge_lorax.formats.errors import MissingInputError
from edge_lorax.formats.jsonfile import read_json_object


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _describe_subspace(path: Path) -> dict:
    from edge_lorax.formats.subspace import read_subspace

    sub = read_subspace(path)
    cfg, mods = sub.config, sub.config["modules"]
    return {"kind": "subspace", "fingerprint": sub.fingerprint, "base_model": sub.base_model, "mean": cfg.get("mean"),
            "modules": len(mods), "K": sorted({ms.k for ms in sub.modules.values()}),
            "r": sorted({ms.rank for ms in sub.modules.values()}),
            "augmented": sorted({ms.k - ms.principal for ms in sub.modules.values()}),
            "sources": len(cfg.get("sources") or []),
            "explained_variance_A_min": _least(mods, "explained_variance_A"),
            "explained_variance_B_min": _least(mods, "explained_variance_B"), "bytes": _size(path)}


def _least(mods: dict, key: str):
    """The smallest recorded value of `key` over the modules (None when none is a number)."""
    values = [m.get(key) for m in mods.values()]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return min(numbers) if numbers else None


def _describe_coeffs(path: Path) -> dict:
    from edge_lorax.formats.user import read_user

    c = read_user(path)
    shapes = sorted({str(tuple(v.shape)) for v in c.coefficients.values()})
    return {"kind": "coefficients", "fingerprint": c.fingerprint, "modules": len(c.modules()), "shapes": shapes,
            "head": {k: list(v.shape) for k, v in c.head.items()}, "parameters": sum(v.size for v in c.coefficients.values()),
            "tensor_bytes": c.nbytes(), "bytes": _size(path), "meta": c.meta}


def _describe_adapter(path: Path) -> dict:
    from edge_lorax.formats.peft import read_adapter

    info = read_adapter(path)  # every tensor is a factor, the carried head, or the folder is refused
    return {"kind": "peft-lora", "base_model": info.base_model, "modules": len(info.modules),
            "ranks": sorted(set(info.ranks.values())), "fan_in_fan_out": info.fan_in_fan_out,
            "parameters": sum(r * sum(info.shapes[m]) for m, r in info.ranks.items()),
            "tensors": {"total": info.tensors, "lora_factors": 2 * len(info.keys), "head": len(info.head)},
            "head": info.head_module or None, "bytes": _size(path)}


_MODEL_KEYS = (*names.BUNDLE_VARIANT_FILES, "model", "gradient")  # files entries that are graphs


def _bundle_config(path: Path) -> dict:
    """The bundle's config.json ({} when absent or linked out: inspect describes, the runtime refuses)."""
    config = bundle_file(path, names.BUNDLE_CONFIG)
    return read_json_object(config, "re-export the bundle") if config is not None else {}


def _describe_bundle(path: Path) -> dict:
    """What a newcomer asks of a bundle: its target and task, base model, labels, the graphs it holds, the default
    user, the longest input, and each precision's verification verdict."""
    manifest, config = read_manifest(path), _bundle_config(path)
    files = manifest["files"]
    id2label = config.get("id2label") if isinstance(config.get("id2label"), dict) else {}
    decoder = {"precision": manifest.get("precision"), "builder_options": manifest.get("builder_options")} \
        if manifest["target"] == TARGET_DECODER else {}
    longest = ((manifest.get("kv") or {}).get("context_length") or (manifest.get("method") or {}).get("max_cache_len")
               or config.get("max_position_embeddings"))  # a decoder .pte holds max_cache_len positions
    return {"kind": "bundle", **{k: manifest[k] for k in ("target", "fingerprint", "task", "mode")}, **decoder,
            "base_model": manifest.get("base_model"), "labels": [id2label[k] for k in sorted(id2label, key=int)] or None,
            "variants": sorted(k for k in _MODEL_KEYS if isinstance(files.get(k), str)),
            "default_user": manifest.get("defaults"), "max_tokens": longest,
            "inputs": len(manifest["inputs"]), "user_inputs": len(manifest["user_inputs"]),
            "verification": {v: verdict(c) for v, c in (manifest.get("verification") or {}).items()},
            "bytes": _size(path)}


def verdict(check: dict) -> str:
    """One precision's verification as the rule it passed, e.g. `max |Δ| 3.1e-06 <= 1e-04 x 12.3, response 1.000 >=
    0.9: pass`; a precision without a parity bound (quantized decoders) says so and passes by the response alone
    (manifest verification.<precision>, docs/formats.md)."""
    worst, tol, scale = check.get("max_abs_diff"), check.get("tolerance"), check.get("scale", 1.0)
    response, least = check.get("response"), check.get("response_min")
    factor = check.get("floor_factor", 1)  # decoders: vs float64 torch, plus factor x torch float32's own error
    floor = factor * max(check.get("fp32_floor") or [0.0])
    plus = (f" + {factor} x {floor / factor:.3g} (torch float32's own error)" if factor != 1 else
            f" + {floor:.3g} (torch float32's own error)") if "fp32_floor" in check else ""
    parity = (f"max |Δ| {worst:.3g} <= {tol:g} x {scale:.3g}{plus}" if tol is not None else
              f"max |Δ| {worst:.3g} (no parity bound at this precision: measured, not asserted)")
    passed = (tol is None or worst <= tol * scale + floor) and (least is None or response is None or response >= least)
    wired = f", response {response:.3f} >= {least:g}" if response is not None and least is not None else ""
    return f"{parity}{wired}: {'pass' if passed else 'FAIL'}"


def describe(path) -> dict:
    """Dispatch on what the path holds; unknown paths get a one-line error naming what was expected."""
    path = Path(path)
    if path.is_dir() and (path / names.SUBSPACE_CONFIG).is_file():
        return _describe_subspace(path)
    if path.is_dir() and (path / names.ADAPTER_CONFIG).is_file():
        return _describe_adapter(path)
    if path.is_dir() and (path / names.BUNDLE_MANIFEST).is_file():
        return _describe_bundle(path)
    if path.is_file() and path.suffix == ".npz":
        return _describe_coeffs(path)
    raise MissingInputError(f"{path}: not a subspace folder, PEFT adapter folder, bundle or .npz coefficients file")
