"""Train many users' coefficients in one pass of the base model: every example carries its own user's coefficients
(the per-example path of builder.inject.EigenLoraLayer: (B, r, K) feeds) and its own task head, so one forward and
backward of the frozen model serves U users.

Equivalence with training each user alone (builder.train.train_coeffs, same seed and steps) is by construction: each
user starts from the state train_coeffs would build (the same seeded model load and coefficient init), sees the same
batches (its own seeded stream of batch_size rows per step), its loss is its own mean (the joint loss is the sum over
users, and no parameter is shared, so each user's gradient is the one it gets alone) and AdamW and the schedule act
element-wise. The joint batch (U x batch_size rows) is sorted by length and cut into chunks of at most
JOINT_TOKENS padded tokens whose gradients add up to the step's, so a row is padded to rows of its own length (CPU
training is FLOP-bound: padding every row to the joint batch's longest made a pass twice as slow as training alone).
What differs: dropout draws and the summation order, i.e. training noise. SEQ_CLS users only (a task head on pooled
features); classification and regression users mix in one batch. One step count for every user (config.steps, else
the largest user's epochs); no early stopping (patience) and no intermediate validation. Groups of U users are
independent: builder.executor runs them as one task each (Ray). write_trained writes the users and their table as
one folder (atomically).
"""

import csv
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_lorax.builder.executor import map_items
from edge_lorax.builder.inject import coeff_tensors, set_feed
from edge_lorax.builder.loop import (
    SPLITS,
    Classification,
    TrainConfig,
    TrainResult,
    batch_stream,
    collate,
    forward,
    schedule,
    task_loss,
    total_steps,
)
from edge_lorax.builder.models import SEQ_CLS, head_module, load_tokenizer, read_head, resolve_model, task_type
from edge_lorax.formats import names
from edge_lorax.formats.atomic import atomic_dir
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.tasks import SUFFIXES
from edge_lorax.formats.user import User, write_user

DATA_SUFFIXES = (".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class Trained:
    """One user's outcome: the user file's content and its scores (TrainResult, as train_coeffs reports)."""

    name: str
    user: User
    result: TrainResult
    group: int
    group_users: int


def data_files(data_dir) -> list:
    """The task files of a folder (.csv, .tsv, .jsonl, .tab, .ndjson in any case, as formats.tasks reads them; one
    user each, named by the file's stem), sorted. Every other file is refused (a user silently left out is worse
    than a folder to tidy); hidden files and sub-folders are skipped. Two stems equal but for case are refused: on
    macOS or Windows their user files would be one file."""
    entries = sorted(p for p in Path(data_dir).iterdir() if not p.name.startswith(".") and p.is_file())
    other = [p.name for p in entries if p.suffix.lower() not in SUFFIXES]
    if other:
        raise InputError(f"{data_dir}: {other[0]!r} is not a task file ({'/'.join(SUFFIXES)}); every file in the folder is "
                         "one user's examples: move it out or convert it")
    if not entries:
        raise InputError(f"{data_dir}: no {'/'.join(DATA_SUFFIXES)} files (nor .tab/.ndjson, in any case); put one task "
                         "file per user there")
    stems = [p.stem.casefold() for p in entries]
    dup = next((p for p, s in zip(entries, stems) if stems.count(s) > 1), None)
    if dup:
        twins = [p.name for p, s in zip(entries, stems) if s == dup.stem.casefold()]
        raise InputError(f"{data_dir}: {' and '.join(twins)} are both user {dup.stem!r}; keep one file per user name")
    return entries


class UserHeads(nn.Module):
    """U task heads in place of the model's: weight (U, in, L), bias (U, L), L the widest user's labels. Each row
    goes through its own user's head (`rows`: (B,) user index), or every row through one user's first n columns
    (`only` = (u, n): evaluation)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)  # (U, in, L), (U, L)
        self.rows, self.only = None, None

    def forward(self, x):  # (B, in), or (B, T, in) for a head over every token (Llama-style)
        if self.only is not None:
            u, n = self.only
            return x @ self.weight[u, :, :n] + self.bias[u, :n]  # (..., n)
        w, b = self.weight[self.rows], self.bias[self.rows]  # (B, in, L), (B, L)
        return torch.einsum("b...i,bil->b...l", x, w) + (b if x.dim() == 2 else b[:, None])


def _initial_state(model_path: Path, subspace: Subspace, labels: int, rank, k, init: str, seed: int) -> tuple:
    """(coefficients, head, the model) as train_coeffs starts a user of `labels` outputs: the same seeded load and init."""
    from edge_lorax.builder.train import coeff_model

    torch.manual_seed(seed)
    net = coeff_model(model_path, subspace, labels, rank=rank, k=k, init=init, seed=seed, kind=SEQ_CLS)
    return {n: v.copy() for n, v in coeff_tensors(net).items()}, read_head(net), net


class _Group:
    """U users on one injected model: stacked coefficients (U, r, K) / (U, K, r) per input name and UserHeads."""

    def __init__(self, model_path: Path, subspace: Subspace, tasks: list, rank, k, init: str, seed: int):
        widths = [t.num_labels for _, t in tasks]  # output width per user: its classes, 1 for regression
        starts = {w: _initial_state(model_path, subspace, w, rank, k, init, seed) for w in sorted(set(widths))}
        self.net = starts[max(widths)][2]  # the widest user's loaded model carries the group (its head is replaced)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.names = sorted(starts[widths[0]][0])
        self.coeffs = [nn.Parameter(torch.from_numpy(np.stack([starts[w][0][n] for w in widths]))) for n in self.names]
        self.heads = UserHeads(*self._stacked_heads(starts, widths))
        setattr(self.net, head_module(self.net), self.heads)
        self.widths = widths

    @staticmethod
    def _stacked_heads(starts: dict, widths: list) -> tuple:
        """(U, in, L) weights and (U, L) biases, each user's own in its first columns, zeros beyond (never read)."""
        hidden, most = starts[widths[0]][1][names.HEAD_WEIGHT_T].shape[0], max(widths)
        weight, bias = torch.zeros(len(widths), hidden, most), torch.zeros(len(widths), most)
        for u, w in enumerate(widths):
            weight[u, :, :w] = torch.from_numpy(starts[w][1][names.HEAD_WEIGHT_T])
            bias[u, :w] = torch.from_numpy(starts[w][1][names.HEAD_BIAS])
        return weight, bias

    def parameters(self) -> list:
        return [*self.coeffs, self.heads.weight, self.heads.bias]

    def use_rows(self, rows: torch.Tensor):
        """Every example through its own user (rows: (B,) user index)."""
        set_feed(self.net, {n: p[rows] for n, p in zip(self.names, self.coeffs)})  # (B, r, K) / (B, K, r)
        self.heads.rows, self.heads.only = rows, None

    def use_user(self, u: int):
        """Every example through user u (evaluation)."""
        set_feed(self.net, {n: p[u] for n, p in zip(self.names, self.coeffs)})
        self.heads.rows, self.heads.only = None, (u, self.widths[u])

    def user(self, u: int) -> tuple:
        """(coefficients, head) of user u as user.npz arrays."""
        coeffs = {n: p[u].detach().numpy().copy() for n, p in zip(self.names, self.coeffs)}
        w = self.widths[u]
        head = {names.HEAD_WEIGHT_T: self.heads.weight[u, :, :w].detach().numpy().copy(),
                names.HEAD_BIAS: self.heads.bias[u, :w].detach().numpy().copy()}
        return coeffs, head


JOINT_TOKENS = 2048  # rows x padded length of one chunk: 2048 and 1024 were fastest of 512..8192 on 2 CPU cores


@dataclass(frozen=True)
class _Chunk:
    """Rows of several users padded to the chunk's longest: input_ids and mask (R, T), rows (R,) user index, and per
    user present (u, positions in the chunk, targets, the share of u's batch they are)."""

    ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor
    parts: list


def _joint_chunks(data: list, indices: list, tokens: int) -> list:
    """Every user's rows at its indices, sorted by length (longest first) and cut into chunks of at most `tokens`
    padded tokens (at least one row each), so a row is padded to its neighbours' length, not the joint batch's."""
    pairs = sorted(((u, int(i)) for u, index in enumerate(indices) for i in index),
                   key=lambda p: -len(data[p[0]].ids[p[1]]))
    chunks, start = [], 0
    while start < len(pairs):
        width = len(data[pairs[start][0]].ids[pairs[start][1]])
        stop = start + max(1, tokens // max(width, 1))
        chunks.append(_chunk(data, indices, pairs[start:stop]))
        start = stop
    return chunks


def _chunk(data: list, indices: list, pairs: list) -> _Chunk:
    """One _Chunk of (user, row) pairs, each user's rows collated by loop.collate and padded to the chunk's width."""
    users = sorted({u for u, _ in pairs})
    parts = [collate(data[u], [i for v, i in pairs if v == u]) for u in users]
    width = max(p[0].shape[1] for p in parts)
    pad = lambda t, v: nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
    ids = torch.cat([pad(p[0], data[u].pad_id) for u, p in zip(users, parts)])  # (R, T)
    mask = torch.cat([pad(p[1], 0) for p in parts])  # (R, T)
    rows = torch.cat([torch.full((len(p[0]),), u) for u, p in zip(users, parts)])  # (R,)
    starts = np.cumsum([0] + [len(p[0]) for p in parts])
    share = [(b - a) / len(indices[u]) for u, a, b in zip(users, starts, starts[1:])]
    return _Chunk(ids, mask, rows, [(u, slice(a, b), p[2], w)
                                    for u, a, b, p, w in zip(users, starts, starts[1:], parts, share)])


def _chunk_loss(group: _Group, data: list, chunk: _Chunk) -> torch.Tensor:
    """The chunk's part of Σ over users of each user's mean task loss (a user's rows in the chunk weigh their share
    of its batch), on each user's own output columns."""
    group.use_rows(chunk.rows)
    logits = forward(group.net, chunk.ids, chunk.mask)  # (R, L)
    return sum(share * task_loss(logits[sl, :group.widths[u]], t, data[u].kind) for u, sl, t, share in chunk.parts)


def _fit_group(group: _Group, encoded: list, config: TrainConfig, total: int) -> float:
    """The joint optimisation loop (AdamW + the host trainer's schedule): each step's gradient accumulated over the
    joint batch's chunks; its seconds."""
    params = group.parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total, config.warmup))
    streams = [batch_stream(len(e["train"].ids), config.batch_size, config.seed) for e in encoded]
    data = [e["train"] for e in encoded]
    group.net.train()
    start = time.perf_counter()
    for _ in range(total):
        optimizer.zero_grad(set_to_none=True)
        for chunk in _joint_chunks(data, [next(s) for s in streams], JOINT_TOKENS):
            _chunk_loss(group, data, chunk).backward()
        optimizer.step()
        scheduler.step()
    group.net.eval()
    return time.perf_counter() - start


def train_group(model_path: Path, subspace: Subspace, config: TrainConfig, rank, k, init: str, item: tuple) -> list:
    """One executor task: (group index, [(name, Task)]) -> [Trained], trained together then scored one by one."""
    index, tasks = item
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(model_path)
    objectives = [Classification(t, tokenizer, config.max_length) for _, t in tasks]
    encoded = [{s: o.encode(t.split(s)) for s in SPLITS} for o, (_, t) in zip(objectives, tasks)]
    group = _Group(model_path, subspace, tasks, rank, k, init, config.seed)
    total = max(total_steps(len(t.train), config) for _, t in tasks)
    seconds = _fit_group(group, encoded, config, total)
    n_params = sum(p[0].numel() for p in group.parameters())
    out = []
    with torch.no_grad():
        for u, ((name, task), objective, enc) in enumerate(zip(tasks, objectives, encoded)):
            group.use_user(u)
            scores = {s: objective.evaluate(group.net, enc[s], config.eval_batch_size) for s in ("validation", "test")}
            result = TrainResult(total, round(seconds / len(tasks), 3), round(seconds / total / len(tasks), 4),
                                 n_params, total, scores["validation"], scores["test"])
            out.append(Trained(name, _user_of(group, u, subspace, task, result, rank, k, init), result, index, len(tasks)))
    set_feed(group.net, None)
    return out


def _user_of(group: _Group, u: int, subspace: Subspace, task, result: TrainResult, rank, k, init: str) -> User:
    """User u as train_coeffs would save it (builder.train's meta), marked as trained with others."""
    from edge_lorax.builder.train import task_meta

    coeffs, head = group.user(u)
    settings = {"task_type": SEQ_CLS, "rank": rank, "k": k, "init": init, "base_model": subspace.base_model,
                "head_module": head_module(group.net), "trained_with": "train-many"}
    return User(subspace.fingerprint, coeffs, head, task_meta(task, result, settings))


def train_many(subspace: Subspace, tasks: list, *, model=None, config: TrainConfig | None = None, users_per_batch: int = 8,
               rank=None, k=None, init: str = "zero_b", executor=None, progress=None) -> list:
    """[(name, Task)] -> [Trained] in the given order: groups of users_per_batch users, each group one task of
    `executor` (builder.executor; None: here). Refuses a model whose task type is not SEQ_CLS."""
    from edge_lorax.builder.models import check_base
    from edge_lorax.builder.train import check_dims

    config = config or TrainConfig(lr=2e-2)
    if not (isinstance(users_per_batch, int) and users_per_batch >= 1):
        raise InputError(f"--users-per-batch {users_per_batch!r}: an integer >= 1 is needed")
    path = resolve_model(model)
    check_base(path, subspace)
    check_dims(subspace, rank, k)
    if task_type(path) != SEQ_CLS:
        raise InputError(f"{path}: train-many trains task heads (SEQ_CLS); for a decoder answering with label words "
                         "train each user with `edge-lorax train`")
    groups = [(i, tasks[s:s + users_per_batch]) for i, s in enumerate(range(0, len(tasks), users_per_batch))]
    task = functools.partial(train_group, path, subspace, config, rank, k, init)
    outcomes = map_items(task, groups, executor, progress)
    return [t for o in outcomes for t in o.value]


TABLE_COLUMNS = ("user", "output", "kind", "labels", "steps", "group", "group_users", "train_s_per_user",
                 "validation", "test")


def _row(t: Trained) -> dict:
    """One line of train-many's table (metrics as JSON objects in the CSV)."""
    r = t.result
    return {"user": t.name, "output": f"{t.name}.npz", "kind": t.user.meta.get("kind"),
            "labels": len(t.user.meta.get("labels") or []), "steps": r.steps, "group": t.group,
            "group_users": t.group_users, "train_s_per_user": r.train_s,
            "validation": {k: round(v, 6) for k, v in r.validation.items()},
            "test": {k: round(v, 6) for k, v in r.test.items()}}


def write_trained(trained: list, out_dir, overwrite: bool = False) -> list:
    """out_dir/<user>.npz each plus train-many.json and train-many.csv, the folder appearing whole; returns the rows."""
    rows = [_row(t) for t in trained]
    with atomic_dir(out_dir, overwrite) as tmp:
        for t in trained:
            write_user(t.user, tmp / f"{t.name}.npz")
        (tmp / "train-many.json").write_text(json.dumps(rows, indent=1) + "\n")
        with open(tmp / "train-many.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()} for row in rows)
    return rows
