"""Merged base weights: one user's ΔW folded into a copy of the base model (zero overhead, one user only)."""

from pathlib import Path

from edge_lorax.builder.inject import inject_subspace
from edge_lorax.builder.models import load_model, resolve_model
from edge_lorax.formats.atomic import atomic_dir
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.user import User, check_fingerprint


def merged_model(model, subspace: Subspace, coeffs: User):
    """Inject, load the user, fold ΔW into each base layer and return the plain (unwrapped) model."""
    check_fingerprint(coeffs, subspace.fingerprint)
    layers = inject_subspace(model, subspace, coeffs=coeffs.coefficients)
    qualified = {id(m): n for n, m in model.named_modules()}  # one walk of the tree, not one per layer
    for layer in layers.values():
        layer.merge()
        parent, _, attr = qualified[id(layer)].rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer.base)
    return model


def save_merged_model(model_path, subspace: Subspace, coeffs: User, out_dir, overwrite=False) -> Path:
    """save_pretrained of the merged model (safetensors), written atomically."""
    model = merged_model(load_model(resolve_model(model_path)), subspace, coeffs)
    with atomic_dir(out_dir, overwrite) as tmp:
        model.save_pretrained(tmp)
    return Path(out_dir)
