"""Coefficient training: base weights and components frozen, only coeff_A/coeff_B per module (+ the task head) learn.

This file prepares the model and turns it into a `user.npz`; the optimisation loop is the shared one in
`edge_lorax.baselines`, so EigenLoRAx, LoRA, VeRA and head-only runs are measured by the same harness.
"""

from pathlib import Path

from edge_lorax import names
from edge_lorax.coeffs import Coefficients
from edge_lorax.inject import coeff_tensors, init_coeffs, inject_subspace
from edge_lorax.models import canonical_base, head_module, load_model, portable_model_id, resolve_model
from edge_lorax.subspace import Subspace


def check_base(model_path: Path, subspace: Subspace):
    """Refuse training on a base model other than the one the subspace was built for."""
    have, want = portable_model_id(model_path), subspace.base_model
    if canonical_base(have) != canonical_base(want):
        raise ValueError(f"{model_path}: base model {have!r}, but the subspace was built for {want!r}; "
                         "pass --model with that model or build a subspace for this one")


def coeff_model(model, subspace: Subspace, num_labels: int, *, rank=None, k=None, init="zero_b", seed=0):
    """The base model with the subspace injected and coefficients initialised; trainable = coefficients + head."""
    path = resolve_model(model)
    check_base(path, subspace)
    net = load_model(path, num_labels)
    inject_subspace(net, subspace, rank=rank, k=k)
    init_coeffs(net, init, seed)
    for p in getattr(net, head_module(net)).parameters():
        p.requires_grad_(True)
    return net


def head_tensors(net) -> dict:
    """The task head as user.npz tensors: weight pre-transposed (in, labels) for MatMul + Add graphs."""
    head = getattr(net, head_module(net))
    return {names.HEAD_WEIGHT_T: head.weight.detach().T.contiguous().numpy().copy(),
            names.HEAD_BIAS: head.bias.detach().numpy().copy()}


def user_coefficients(net, subspace: Subspace, meta: dict) -> Coefficients:
    """What `edge-lorax train` saves: every module's coefficients, the head and the subspace fingerprint."""
    return Coefficients(subspace.fingerprint, coeff_tensors(net), head_tensors(net), meta)


def apply_user(net, coeffs: Coefficients):
    """Load a user.npz into an injected model: coefficients into the layers, head tensors into the head."""
    import torch

    from edge_lorax.inject import load_coeff_tensors

    load_coeff_tensors(net, coeffs.tensors)
    if coeffs.head:
        head = getattr(net, head_module(net))
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(coeffs.head[names.HEAD_WEIGHT_T].T.copy()))
            head.bias.copy_(torch.from_numpy(coeffs.head[names.HEAD_BIAS]))
    return net
