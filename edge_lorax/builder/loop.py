"""The shared training loop every method is measured with: EigenLoRAx coefficients, LoRA, VeRA and head-only.

`fit(model, task, tokenizer, config, objective)` trains whatever parameters of any model have requires_grad (or the
params passed) with AdamW and a linear warm-up/decay schedule. The objective says how a split is encoded, what a
batch's loss is and how a split is scored: `Classification` (here: a task head's logits from input_ids +
attention_mask, cross-entropy or MSE) or `builder.generative.Generation` (a causal LM answering with the label word;
PEFT's CAUSAL_LM task type). `evaluate(model, encoded)` scores one encoded split of a head. Does not build models,
choose parameters or write files (edge_lorax.builder.train and .baselines do).
"""

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from edge_lorax.builder.data import CLASSIFICATION, SPLITS, Split, Task
from edge_lorax.builder.generative import Generation
from edge_lorax.builder.metrics import macro_f1
from edge_lorax.builder.models import CAUSAL_LM
from edge_lorax.formats.errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    """A training schedule; every value is range-checked on construction (InputError naming the CLI option)."""

    lr: float = 5e-4
    batch_size: int = 32
    max_length: int = 64  # tokens; longer sentences are truncated, batches padded to their longest
    steps: int | None = None  # optimizer steps; overrides epochs
    epochs: float = 1.0
    seed: int = 0  # model init (set before building), batch order
    weight_decay: float = 0.0
    warmup: float = 0.06  # fraction of steps with linear warm-up, then linear decay to 0
    eval_every: int = 50  # steps between validation passes (0: only at the end)
    patience: int = 0  # >0: stop after this many evals without a lower val loss, and restore the best weights
    eval_batch_size: int = 128

    def __post_init__(self):
        for name, low in _INT_FLOORS.items():
            value = getattr(self, name)
            if not (value is None and name == "steps") and not (_is_int(value) and value >= low):
                raise InputError(f"{_option(name)} {value!r}: an integer >= {low} is needed")
        for name, (low, high) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and low < value <= high):
                raise InputError(f"{_option(name)} {value!r}: a finite number in ({low}, {high}] is needed")


def _option(field_name: str) -> str:
    """The CLI option a TrainConfig field comes from."""
    return "--" + field_name.replace("_", "-")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


_INT_FLOORS = {"batch_size": 1, "max_length": 1, "steps": 1, "seed": 0, "eval_every": 0, "patience": 0,
               "eval_batch_size": 1}
_FLOAT_RANGES = {"lr": (0, math.inf), "epochs": (0, math.inf)}  # lower bound open: 0 would train nothing


@dataclass(frozen=True)
class TrainResult:
    steps: int
    train_s: float  # the optimisation loop, evaluations excluded
    s_per_step: float
    params: int  # parameters optimised
    best_step: int
    validation: dict  # metrics of the returned weights
    test: dict
    history: tuple = field(default=())  # (step, train loss, val loss, val primary metric)


@dataclass(frozen=True)
class Encoded:
    ids: tuple  # token id lists, truncated, unpadded
    targets: np.ndarray
    kind: str
    pad_id: int


# -------------------------------------------------------------------------------------------------- batching

def encode(split: Split, kind: str, tokenizer, max_length: int) -> Encoded:
    """Tokenise once (truncate to max_length, no padding); batches pad to their own longest row."""
    ids = tokenizer(list(split.texts), truncation=True, max_length=max_length)["input_ids"] if len(split) else []
    return Encoded(tuple(ids), split.targets, kind, tokenizer.pad_token_id or 0)


def collate(data: Encoded, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, targets) for the rows at `index`, right-padded with pad_id."""
    rows = [data.ids[i] for i in index]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    dtype = torch.long if data.kind == CLASSIFICATION else torch.float32
    return input_ids, mask, torch.as_tensor(np.asarray(data.targets)[list(index)], dtype=dtype)


def batch_stream(n: int, batch_size: int, seed: int):
    """Endless shuffled batches of row indices, reshuffled each epoch from one seeded generator."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[start:start + batch_size]


# ------------------------------------------------------------------------------------------ loss and metrics

def _logits_of(output) -> torch.Tensor:
    """A HF ModelOutput's .logits, or the tensor itself."""
    return output.logits if hasattr(output, "logits") else output


def forward(model, input_ids, mask) -> torch.Tensor:
    """Logits from input_ids + attention_mask only (no token_type_ids: the ONNX graphs take these two)."""
    return _logits_of(model(input_ids=input_ids, attention_mask=mask))


def task_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy for classification; MSE on the raw target scale for regression (one output)."""
    if kind == CLASSIFICATION:
        return torch.nn.functional.cross_entropy(logits, targets)
    return torch.nn.functional.mse_loss(logits.squeeze(-1), targets)


def _primary_metric(kind: str) -> str:
    """Higher is better: accuracy (classification) or Pearson r (regression)."""
    return "accuracy" if kind == CLASSIFICATION else "pearson"


def metrics(logits: np.ndarray, targets: np.ndarray, kind: str) -> dict:
    """loss + accuracy/macro-F1, or loss (= MSE) + MSE/MAE/Pearson r; empty splits give {}."""
    if not len(targets):
        return {}
    loss = float(task_loss(torch.from_numpy(logits), torch.from_numpy(np.array(targets)), kind))
    if kind == CLASSIFICATION:
        pred = logits.argmax(-1)
        return {"loss": loss, "accuracy": float((pred == targets).mean()), "macro_f1": macro_f1(pred, targets, logits.shape[-1])}
    pred = logits[:, 0].astype(np.float64)
    r = np.corrcoef(pred, targets)[0, 1] if pred.std() > 0 and np.std(targets) > 0 else 0.0
    return {"loss": loss, "mse": loss, "mae": float(np.abs(pred - targets).mean()), "pearson": float(r)}


@torch.no_grad()
def predict(model, data: Encoded, batch_size: int = 128) -> np.ndarray:
    """Logits in row order, model in eval mode (dropout off); rows are batched by length for less padding."""
    was_training, order = model.training, np.argsort([len(r) for r in data.ids], kind="stable")
    model.eval()
    out = [forward(model, *collate(data, order[i:i + batch_size])[:2]).float() for i in range(0, len(order), batch_size)]
    model.train(was_training)
    logits = torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)
    result = np.empty_like(logits)
    result[order] = logits
    return result


def evaluate(model, data: Encoded, batch_size: int = 128) -> dict:
    """Metrics of one encoded split (see `metrics`)."""
    return metrics(predict(model, data, batch_size), np.asarray(data.targets), data.kind)


# ----------------------------------------------------------------------------------------------- the loop

def total_steps(n_train: int, config: TrainConfig) -> int:
    """config.steps (>= 1 by construction), else ceil(epochs * rows / batch_size); at least 1."""
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * n_train / config.batch_size))


def schedule(total: int, warmup: float):
    """LambdaLR factor: linear warm-up over warmup*total steps, then linear decay to 0 at `total`."""
    warm = max(1, int(warmup * total))
    return lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


def trainable(model) -> list:
    """Parameters with requires_grad, in module order."""
    return [p for p in model.parameters() if p.requires_grad]


class Classification:
    """The objective of a task head (*ForSequenceClassification, PEFT's SEQ_CLS): logits (B, labels) or (B, 1)."""

    def __init__(self, task: Task, tokenizer, max_length: int):
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        self.metric = _primary_metric(task.kind)

    def encode(self, split: Split) -> Encoded:
        return encode(split, self.task.kind, self.tokenizer, self.max_length)

    def size(self, data: Encoded) -> int:
        return len(data.ids)

    def loss(self, model, data: Encoded, index) -> torch.Tensor:
        input_ids, mask, targets = collate(data, index)
        return task_loss(forward(model, input_ids, mask), targets, data.kind)

    def evaluate(self, model, data: Encoded, batch_size: int) -> dict:
        return evaluate(model, data, batch_size)


def objective_for(kind: str, task: Task, tokenizer, max_length: int):
    """The objective of a PEFT task type: Classification (SEQ_CLS) or generative.Generation (CAUSAL_LM)."""
    if kind == CAUSAL_LM:
        return Generation(task, tokenizer, max_length)
    return Classification(task, tokenizer, max_length)


def fit(model, task: Task, tokenizer, config: TrainConfig = TrainConfig(), params=None, progress: bool = True,
        objective=None) -> TrainResult:
    """Train `params` (default: every requires_grad parameter; param-group dicts allowed) with AdamW; val/test scored.

    objective: Classification(task, tokenizer, config.max_length) when None, or a generative.Generation."""
    objective = objective or Classification(task, tokenizer, config.max_length)
    data = {s: objective.encode(task.split(s)) for s in SPLITS}
    params = trainable(model) if params is None else list(params)
    if not params:
        raise InputError("nothing to train: no parameter has requires_grad; unfreeze the adapter and head first")
    total = total_steps(len(task.train), config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total, config.warmup))
    if progress and config.steps is None:  # an epoch of a large task is long: say what it costs before starting
        print(f"train: {total} steps ({config.epochs} epoch(s) of {len(task.train):,} rows at batch {config.batch_size}); "
              "pass --steps N to stop sooner", file=sys.stderr)
    loop = _Loop(model, data, config, total, progress, objective)
    for step, index in zip(range(1, total + 1), batch_stream(len(task.train), config.batch_size, config.seed)):
        loop.step(step, index, optimizer, scheduler)
        if loop.should_eval(step) and loop.validate(step):
            break
    loop.finish()
    n_params = sum(p.numel() for g in params for p in (g["params"] if isinstance(g, dict) else [g]))
    if progress:  # scoring a large split takes a while after the bar has closed
        print(f"train: scoring the validation and test splits ({objective.size(data['validation']) + objective.size(data['test']):,} "
              "rows)", file=sys.stderr)
    validation = loop.final_scores or objective.evaluate(model, data["validation"], config.eval_batch_size)
    return loop.result(n_params, validation, objective.evaluate(model, data["test"], config.eval_batch_size))


class _Loop:
    """State of one `fit`: timing, loss average, validation history, best weights for early stopping."""

    def __init__(self, model, data, config: TrainConfig, total: int, progress: bool, objective):
        from tqdm import tqdm

        self.model, self.data, self.config, self.total, self.objective = model, data, config, total, objective
        self.bar = tqdm(total=total, file=sys.stderr, leave=False, desc="train", disable=not progress)
        self.train_s, self.steps, self.loss_avg, self.history = 0.0, 0, None, []
        self.best_loss, self.best_step, self.best_state, self.bad_evals = math.inf, 0, None, 0
        self.last_scores, self.final_scores = (0, {}), None
        model.train()

    def step(self, step, index, optimizer, scheduler):
        """One optimizer step on the rows at `index`; timed."""
        start = time.perf_counter()
        loss = self.objective.loss(self.model, self.data["train"], index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        self.train_s += time.perf_counter() - start
        self.steps = step
        self.loss_avg = loss.item() if self.loss_avg is None else 0.9 * self.loss_avg + 0.1 * loss.item()
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.loss_avg:.4f}", refresh=False)

    def should_eval(self, step) -> bool:
        """Every eval_every steps and at the last step, when there is a validation split."""
        every = self.config.eval_every
        return self.objective.size(self.data["validation"]) > 0 and (step == self.total or (every and step % every == 0))

    def validate(self, step) -> bool:
        """Score validation, record it, keep the best weights; True when early stopping says stop."""
        self.bar.set_description("train (validating)", refresh=True)
        scores = self.objective.evaluate(self.model, self.data["validation"], self.config.eval_batch_size)
        self.bar.set_description("train", refresh=False)
        metric = self.objective.metric
        self.history.append((step, round(self.loss_avg, 6), round(scores["loss"], 6), round(scores[metric], 6)))
        self.last_scores = (step, scores)
        self.bar.set_postfix(loss=f"{self.loss_avg:.4f}", val_loss=f"{scores['loss']:.4f}", **{f"val_{metric}": f"{scores[metric]:.4f}"})
        if scores["loss"] < self.best_loss:
            self.best_loss, self.best_step, self.bad_evals = scores["loss"], step, 0
            if self.config.patience:
                self.best_state = [p.detach().clone() for p in trainable(self.model)]
            return False
        self.bad_evals += 1
        return bool(self.config.patience) and self.bad_evals >= self.config.patience

    def finish(self):
        """Close the bar; with early stopping, put the best validation weights back; keep the last val scores if final."""
        self.bar.close()
        step, scores = self.last_scores
        restore = self.best_state is not None and self.best_step != self.steps
        self.final_scores = scores if step == self.steps and not restore else None
        if restore:
            with torch.no_grad():
                for p, best in zip(trainable(self.model), self.best_state):
                    p.copy_(best)
        self.model.eval()

    def result(self, n_params, validation, test) -> TrainResult:
        """The TrainResult of this loop."""
        best = self.best_step if self.best_state is not None else self.steps
        return TrainResult(self.steps, round(self.train_s, 3), round(self.train_s / max(1, self.steps), 4), n_params,
                           best, validation, test, tuple(self.history))
