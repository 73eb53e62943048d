"""Inject a subspace into a Hugging Face model: y = W x + Cʙ (coeff_B (coeff_A (Cᴀ x))), ΔW never materialized.

Wraps Linear and GPT-2 Conv1D layers. Coefficients live in the layer as parameters (training) or come from a
shared feed dict (export, per-example batches): a feed tensor with a leading batch dim gives each example its own
user. Components are frozen buffers. Does not handle embeddings, convolutions or dropout on the LoRA path.
"""

import numpy as np
import torch
from torch import nn

from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.peft import resolve_module
from edge_lorax.formats.subspace import Subspace


def _is_conv1d(layer) -> bool:
    return type(layer).__name__ == "Conv1D" and hasattr(layer, "nf")


def layer_shape(layer) -> tuple:
    """(out, in) of a Linear or Conv1D (whose weight is stored (in, out))."""
    w = layer.weight
    return (w.shape[1], w.shape[0]) if _is_conv1d(layer) else tuple(w.shape)


class EigenLoraLayer(nn.Module):
    """A frozen base layer plus the low-rank path through frozen components and small coefficients."""

    def __init__(self, base: nn.Module, name: str, components_A: torch.Tensor, components_B: torch.Tensor, rank: int):
        super().__init__()
        self.base, self.name, self.merged = base, name, False
        self.register_buffer("components_A", components_A)  # (K, in)
        self.register_buffer("components_B", components_B)  # (out, K)
        k = components_A.shape[0]
        self.coeff_A = nn.Parameter(torch.zeros(rank, k, dtype=components_A.dtype))  # (r, K)
        self.coeff_B = nn.Parameter(torch.zeros(k, rank, dtype=components_A.dtype))  # (K, r)
        self.feed = None  # dict shared by all layers of a model: input name -> tensor, or None to use parameters

    def coeffs(self) -> tuple:
        if self.feed is None:
            return self.coeff_A, self.coeff_B
        return self.feed[names.coeff_name(self.name, names.COEFF_A)], self.feed[names.coeff_name(self.name, names.COEFF_B)]

    def forward(self, x):  # x: (..., in) or (B, T, in) with per-example (B, r, K) coefficients
        y = self.base(x)
        if self.merged:
            return y
        ca, cb = self.coeffs()
        h = x @ self.components_A.T  # (..., K)
        h = h @ ca.transpose(-1, -2)  # (..., r)
        h = h @ cb.transpose(-1, -2)  # (..., K)
        return y + h @ self.components_B.T  # (..., out)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        ca, cb = self.coeffs()
        return self.components_B @ cb @ ca @ self.components_A  # (out, in)

    @torch.no_grad()
    def merge(self, sign: float = 1.0):
        """Fold ΔW into the base weight (sign=-1 unmerges); not exact in float32 after many round trips. Merging a
        merged layer (or unmerging an unmerged one) does nothing: ΔW is never added twice."""
        if self.merged == (sign > 0):
            return
        dw = sign * self.delta_weight()
        self.base.weight += dw.T if _is_conv1d(self.base) else dw
        self.merged = sign > 0


def find_module(model: nn.Module, name: str) -> tuple:
    """(qualified name, module) under the one naming rule (edge_lorax.formats.peft.name_variants): a task model vs
    its bare backbone, the model's base_model_prefix (`bert.`) present or not."""
    modules = dict(model.named_modules())
    qualified = resolve_module(name, modules, getattr(model, "base_model_prefix", ""))
    if qualified is not None:
        return qualified, modules[qualified]
    raise InputError(f"module {name} not found in {type(model).__name__}; the subspace was built for another architecture")


def inject_subspace(model: nn.Module, subspace: Subspace, rank: int | None = None, k: int | None = None,
                    coeffs: dict | None = None) -> dict:
    """Replace each target layer in place, freezing the base; with `coeffs` (user.npz tensors) shapes and values
    come from them. Returns {subspace module name: EigenLoraLayer}."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = {}
    for name, ms in subspace.modules.items():
        qual, base = find_module(model, name)
        if layer_shape(base) != (ms.components_B.shape[0], ms.components_A.shape[1]):
            raise InputError(f"{name}: layer is {layer_shape(base)}, subspace has "
                             f"{(ms.components_B.shape[0], ms.components_A.shape[1])}; wrong base model for this subspace")
        if not coeffs and k is not None and not 1 <= k <= ms.k:
            raise InputError(f"--k {k}: module {name} has K={ms.k} components; pass --k from 1 to {ms.k}")
        r, kk = coeffs[names.coeff_name(name, names.COEFF_A)].shape[-2:] if coeffs else (rank or ms.rank, k or ms.k)
        layer = EigenLoraLayer(base, name, torch.from_numpy(ms.components_A[:kk].copy()),
                               torch.from_numpy(ms.components_B[:, :kk].copy()), r)
        parent, _, attr = qual.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer)
        layers[name] = layer
    if coeffs:
        load_coeff_tensors(model, coeffs)
    return layers


def eigen_layers(model: nn.Module) -> dict:
    """{subspace module name: layer} of an injected model."""
    return {m.name: m for m in model.modules() if isinstance(m, EigenLoraLayer)}


def set_feed(model: nn.Module, feed: dict | None):
    """Make every layer read its coefficients from `feed` (names as in user.npz), or from its parameters (None)."""
    for layer in eigen_layers(model).values():
        layer.feed = feed


@torch.no_grad()
def load_coeff_tensors(model: nn.Module, tensors: dict):
    """Copy `<module>.coeff_A/B` arrays into the layer parameters (shapes must match)."""
    for name, layer in eigen_layers(model).items():
        layer.coeff_A.copy_(torch.as_tensor(np.asarray(tensors[names.coeff_name(name, names.COEFF_A)])))
        layer.coeff_B.copy_(torch.as_tensor(np.asarray(tensors[names.coeff_name(name, names.COEFF_B)])))


def coeff_tensors(model: nn.Module) -> dict:
    """The layer parameters as float32 arrays under their user.npz names."""
    out = {}
    for name, layer in eigen_layers(model).items():
        out[names.coeff_name(name, names.COEFF_A)] = layer.coeff_A.detach().float().numpy().copy()
        out[names.coeff_name(name, names.COEFF_B)] = layer.coeff_B.detach().float().numpy().copy()
    return out


@torch.no_grad()
def init_coeffs(model: nn.Module, mode: str = "uniform", seed: int = 0):
    """"uniform": both U(-0.5, 0.5) as in the paper (ΔW ≠ 0 at step 0); "zero_b": coeff_B = 0, step 0 is the base model."""
    gen = torch.Generator().manual_seed(seed)
    for _, layer in sorted(eigen_layers(model).items()):
        layer.coeff_A.copy_(torch.rand(layer.coeff_A.shape, generator=gen) - 0.5)
        if mode == "uniform":
            layer.coeff_B.copy_(torch.rand(layer.coeff_B.shape, generator=gen) - 0.5)
        elif mode == "zero_b":
            layer.coeff_B.zero_()
        else:
            raise InputError(f"init must be 'uniform' or 'zero_b', got {mode!r}")


def merge_all(model: nn.Module, sign: float = 1.0):
    """Merge (sign=1) or unmerge (sign=-1) every injected layer."""
    for layer in eigen_layers(model).values():
        layer.merge(sign)
