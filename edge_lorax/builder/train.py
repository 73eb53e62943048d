"""Coefficient training: base weights and components frozen, only coeff_A/coeff_B per module (+ the task head) learn.

Two PEFT task types: SEQ_CLS (a task head learns with the coefficients and is saved in the user) and CAUSAL_LM (a
decoder answers with the label word: coefficients only, the user carries the labels and the task type in its meta).

This file prepares the model and turns it into a `user.npz`; the optimisation loop is the shared one in
`edge_lorax.builder.loop`, so EigenLoRAx, LoRA, VeRA and head-only runs are measured by the same harness. Before any
model is loaded, --k and --rank are checked against the subspace, --max-length against the model's positions, the
base model against the subspace's, and the output for being writable.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_lorax.builder.inject import coeff_tensors, init_coeffs, inject_subspace
from edge_lorax.builder.models import (
    SEQ_CLS,
    check_base,
    check_max_length,
    head_module,
    load_for_task,
    read_head,
    resolve_model,
    task_type,
    write_head,
)
from edge_lorax.formats.atomic import check_output
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.user import User


def check_dims(subspace: Subspace, rank=None, k=None):
    """--k within 1..the subspace's K, --rank within 1..its r (None: the subspace's own): a bundle's coefficient
    inputs are (r, K), so a user of a higher rank could not run on one."""
    most, r = min(ms.k for ms in subspace.modules.values()), min(ms.rank for ms in subspace.modules.values())
    if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= most):
        raise InputError(f"--k {k!r}: the subspace has K={most} components per module; pass --k from 1 to {most} "
                         "or leave it out to use all")
    if rank is not None and not (isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= r):
        raise InputError(f"--rank {rank!r}: the subspace's r is {r}; pass --rank from 1 to {r} or leave it out "
                         "(a higher rank could not run on the subspace's bundles)")


def coeff_model(model, subspace: Subspace, num_labels: int, *, rank=None, k=None, init="zero_b", seed=0, kind=SEQ_CLS):
    """The base model with the subspace injected and coefficients initialised; trainable = coefficients (+ the head
    for SEQ_CLS)."""
    path = resolve_model(model)
    check_base(path, subspace)
    net = load_for_task(path, kind, num_labels)
    inject_subspace(net, subspace, rank=rank, k=k)
    init_coeffs(net, init, seed)
    if kind == SEQ_CLS:
        for p in getattr(net, head_module(net)).parameters():
            p.requires_grad_(True)
    return net


def user_coefficients(net, subspace: Subspace, meta: dict) -> User:
    """What `edge-lorax train` saves: every module's coefficients, the head (if the model has one) and the subspace
    fingerprint."""
    head = read_head(net) if meta.get("task_type", SEQ_CLS) == SEQ_CLS else {}
    return User(subspace.fingerprint, coeff_tensors(net), head, meta)


def apply_user(net, coeffs: User):
    """Load a user.npz into an injected model: coefficients into the layers, head tensors into the head."""
    from edge_lorax.builder.inject import load_coeff_tensors

    load_coeff_tensors(net, coeffs.coefficients)
    if coeffs.head:
        write_head(net, coeffs.head)
    return net


@dataclass(frozen=True)
class CoeffReport:
    task: str
    output: str
    coeff_params: int
    head_params: int
    bytes: int  # the user.npz file
    wall_s: float
    result: object  # baselines.TrainResult

    def summary(self) -> str:
        """The final line: test metric, trainable params (coefficients, head), file bytes, time."""
        metric = next((m for m in ("accuracy", "perplexity") if m in self.result.test), "pearson")
        return (f"{self.task} eigenlorax: test {metric} {self.result.test.get(metric, float('nan')):.4f} | trainable "
                f"{self.coeff_params:,} coefficients + {self.head_params:,} head | {self.bytes:,} bytes | "
                f"{self.wall_s:.1f} s wall, {self.result.s_per_step:.3f} s/step x {self.result.steps}")


def task_meta(task, result, settings: dict) -> dict:
    return {"method": "eigenlorax", "task": task.name, "kind": task.kind, "labels": list(task.labels), **settings,
            "test": {k: round(v, 6) for k, v in result.test.items()}}


def train_coeffs(subspace: Subspace, task, output, *, model=None, rank=None, k=None, init="zero_b",
                 config=None, progress=True, kind=None, overwrite: bool = True, objective=None) -> CoeffReport:
    """Train one user's coefficients (+ head for SEQ_CLS) on `task` and save them as user.npz (carries the
    fingerprint); kind None: models.task_type's pick for the model; objective None: loop.objective_for's (label
    words or a head), else e.g. token_examples.TokenLoss for token examples; without `overwrite` an output that
    appeared meanwhile is refused (formats.atomic's publish rule)."""
    from edge_lorax.builder.loop import TrainConfig, fit, objective_for
    from edge_lorax.builder.models import load_tokenizer
    from edge_lorax.formats.user import write_user

    start, config = time.perf_counter(), config or TrainConfig(lr=2e-2)
    path = resolve_model(model)
    check_base(path, subspace)
    kind = task_type(path, kind)
    check_dims(subspace, rank, k)
    check_max_length(path, config.max_length)
    check_output(output, overwrite=True)
    tokenizer = load_tokenizer(path)
    objective = objective or objective_for(kind, task, tokenizer, config.max_length)  # refuses what it cannot train
    torch.manual_seed(config.seed)
    net = coeff_model(model, subspace, task.num_labels, rank=rank, k=k, init=init, seed=config.seed, kind=kind)
    result = fit(net, task, tokenizer, config, progress=progress, objective=objective)
    settings = {"task_type": kind, "rank": rank, "k": k, "init": init, "base_model": subspace.base_model,
                **({"head_module": head_module(net)} if kind == SEQ_CLS else {})}
    user = user_coefficients(net, subspace, task_meta(task, result, settings))
    write_user(user, output, overwrite)
    return CoeffReport(task.name, str(output), sum(v.size for v in user.coefficients.values()),
                       sum(v.size for v in user.head.values()), Path(output).stat().st_size,
                       round(time.perf_counter() - start, 2), result)
