"""`edge-lorax inspect`: a summary dict of a subspace folder, a coefficients file, a PEFT adapter or a bundle."""

import json
from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.errors import MissingInputError


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def describe_subspace(path: Path) -> dict:
    from edge_lorax.formats.subspace import read_subspace

    cfg = read_subspace(path).config
    mods = cfg["modules"]
    return {"kind": "subspace", "fingerprint": cfg["fingerprint"], "base_model": cfg["base_model"], "mean": cfg["mean"],
            "modules": len(mods), "K": sorted({m["K"] for m in mods.values()}), "r": sorted({m["r"] for m in mods.values()}),
            "augmented": sorted({m["augmented"] for m in mods.values()}), "sources": len(cfg["sources"]),
            "explained_variance_A_min": min(m["explained_variance_A"] for m in mods.values()),
            "explained_variance_B_min": min(m["explained_variance_B"] for m in mods.values()), "bytes": _size(path)}


def describe_coeffs(path: Path) -> dict:
    from edge_lorax.formats.user import read_user

    c = read_user(path)
    shapes = sorted({str(tuple(v.shape)) for v in c.coefficients.values()})
    return {"kind": "coefficients", "fingerprint": c.fingerprint, "modules": len(c.modules()), "shapes": shapes,
            "head": {k: list(v.shape) for k, v in c.head.items()}, "parameters": sum(v.size for v in c.coefficients.values()),
            "tensor_bytes": c.nbytes(), "bytes": _size(path), "meta": c.meta}


def describe_adapter(path: Path) -> dict:
    from edge_lorax.formats.peft import read_adapter

    info = read_adapter(path)
    return {"kind": "peft-lora", "base_model": info.base_model, "modules": len(info.modules),
            "ranks": sorted(set(info.ranks.values())), "fan_in_fan_out": info.fan_in_fan_out,
            "parameters": sum(r * sum(info.shapes[m]) for m, r in info.ranks.items()), "bytes": _size(path)}


def describe_bundle(path: Path) -> dict:
    manifest = json.loads((path / names.BUNDLE_MANIFEST).read_text())
    return {"kind": "bundle", **{k: manifest[k] for k in ("fingerprint", "mode") if k in manifest},
            "inputs": len(manifest.get("inputs", [])), "bytes": _size(path)}


def describe(path) -> dict:
    """Dispatch on what the path holds; unknown paths get a one-line error naming what was expected."""
    path = Path(path)
    if path.is_dir() and (path / names.SUBSPACE_CONFIG).is_file():
        return describe_subspace(path)
    if path.is_dir() and (path / names.ADAPTER_CONFIG).is_file():
        return describe_adapter(path)
    if path.is_dir() and (path / names.BUNDLE_MANIFEST).is_file():
        return describe_bundle(path)
    if path.is_file() and path.suffix == ".npz":
        return describe_coeffs(path)
    raise MissingInputError(f"{path}: not a subspace folder, PEFT adapter folder, bundle or .npz coefficients file")
