"""Merged base weights: one user's ΔW folded into a copy of the base model (zero overhead, one user only).

A user with a task head becomes a *ForSequenceClassification folder carrying that head and the user's label names
(`id2label` from its __meta__ "labels"), so AutoModelForSequenceClassification reloads the user's predictions; a
user without a head on a causal LM (its meta task_type CAUSAL_LM, or a *ForCausalLM folder) keeps the LM head, so
AutoModelForCausalLM generates its answers; any other user without a head becomes the bare encoder, and
`save_merged_model` says so. Does not export ONNX (the exporter's
merged variant calls `merged_model`).
"""

from dataclasses import dataclass
from pathlib import Path

from edge_lorax.builder.inject import inject_subspace
from edge_lorax.builder.models import (
    CAUSAL_LM,
    head_module,
    load_causal_lm,
    load_model,
    resolve_model,
    task_type,
    write_head,
)
from edge_lorax.formats import names
from edge_lorax.formats.atomic import atomic_dir, check_output
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.user import User, check_fingerprint


@dataclass(frozen=True)
class MergedModel:
    path: Path
    head: str  # what the folder carries besides the encoder, said plainly


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


def _user_labels(coeffs: User, width: int) -> list | None:
    """The user's own class names from its __meta__ "labels" when they fit the head's width, else None."""
    labels = coeffs.meta.get("labels")
    ok = isinstance(labels, list) and len(labels) == width and all(isinstance(x, str) for x in labels)
    return labels if ok else None


def _user_model(path: Path, coeffs: User) -> tuple:
    """(the base model as this user runs it, a plain description): with the user's head and labels, or bare."""
    if not coeffs.head and CAUSAL_LM in (coeffs.meta.get("task_type"), task_type(path)):
        return load_causal_lm(path), "the causal LM's own LM head (no task head); load with AutoModelForCausalLM"
    if not coeffs.head:
        return load_model(path), "none: the user has no task head, so the folder is the bare encoder (AutoModel)"
    width = coeffs.head[names.HEAD_BIAS].shape[0]
    net = load_model(path, width)
    write_head(net, coeffs.head)
    labels = _user_labels(coeffs, width)
    if labels:
        net.config.id2label = dict(enumerate(labels))
        net.config.label2id = {label: i for i, label in enumerate(labels)}
    named = f"labels {', '.join(labels)}" if labels else "no label names in the user (LABEL_i)"
    return net, f"{head_module(net)} ({width} outputs, {named}); load with AutoModelForSequenceClassification"


def save_merged_model(model_path, subspace: Subspace, coeffs: User, out_dir, overwrite=False) -> MergedModel:
    """save_pretrained (safetensors) of the merged model with the user's head and labels, written atomically."""
    check_output(out_dir, overwrite)
    model, head = _user_model(resolve_model(model_path), coeffs)
    model = merged_model(model, subspace, coeffs)
    with atomic_dir(out_dir, overwrite) as tmp:
        model.save_pretrained(tmp)
    return MergedModel(Path(out_dir), head)
