"""Baselines (PEFT LoRA, PEFT VeRA, head-only) and the shared training harness every method is measured with.

`fit(model, task, tokenizer, config)` trains whatever parameters of any model have requires_grad (or the params
passed); the model is called with input_ids + attention_mask only and must return logits (or `.logits`).
`evaluate(model, encoded)` scores one encoded split. `train_lora(task, output, method=...)` builds the PEFT model,
fits it and writes a PEFT adapter folder whose base id is portable (never a local path).
"""

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from edge_lorax.data import CLASSIFICATION, SPLITS, Split, Task
from edge_lorax.models import head_module, load_model, load_tokenizer, portable_model_id, resolve_model
from edge_lorax.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAINING_JSON
from edge_lorax.util import atomic_dir

METHODS = ("lora", "vera", "head")
METHOD_LR = {"lora": 2e-3, "vera": 1e-2, "head": 5e-3}  # CLI defaults (LoRA 5e-4 reached 0.68 vs 2e-3 0.91 on tweets in 60 steps)
HEAD_WEIGHTS = "head.safetensors"


@dataclass(frozen=True)
class TrainConfig:
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

def logits_of(output) -> torch.Tensor:
    """A HF ModelOutput's .logits, or the tensor itself."""
    return output.logits if hasattr(output, "logits") else output


def forward(model, input_ids, mask) -> torch.Tensor:
    """Logits from input_ids + attention_mask only (no token_type_ids: the ONNX graphs take these two)."""
    return logits_of(model(input_ids=input_ids, attention_mask=mask))


def task_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy for classification; MSE on the raw target scale for regression (one output)."""
    if kind == CLASSIFICATION:
        return torch.nn.functional.cross_entropy(logits, targets)
    return torch.nn.functional.mse_loss(logits.squeeze(-1), targets)


def primary_metric(kind: str) -> str:
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


def macro_f1(pred: np.ndarray, targets: np.ndarray, classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in targets or predictions."""
    scores = []
    for c in range(classes):
        tp, fp, fn = np.sum((pred == c) & (targets == c)), np.sum((pred == c) & (targets != c)), np.sum((pred != c) & (targets == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


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
    """config.steps, else ceil(epochs * rows / batch_size); at least 1."""
    if config.steps is not None:
        return max(1, config.steps)
    return max(1, math.ceil(config.epochs * n_train / config.batch_size))


def schedule(total: int, warmup: float):
    """LambdaLR factor: linear warm-up over warmup*total steps, then linear decay to 0 at `total`."""
    warm = max(1, int(warmup * total))
    return lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


def trainable(model) -> list:
    """Parameters with requires_grad, in module order."""
    return [p for p in model.parameters() if p.requires_grad]


def fit(model, task: Task, tokenizer, config: TrainConfig = TrainConfig(), params=None, progress: bool = True) -> TrainResult:
    """Train `params` (default: every requires_grad parameter; param-group dicts allowed) with AdamW; val/test scored."""
    data = {s: encode(task.split(s), task.kind, tokenizer, config.max_length) for s in SPLITS}
    params = trainable(model) if params is None else list(params)
    if not params:
        raise ValueError("nothing to train: no parameter has requires_grad; unfreeze the adapter and head first")
    total = total_steps(len(task.train), config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total, config.warmup))
    loop = _Loop(model, data, config, total, progress)
    for step, index in zip(range(1, total + 1), batch_stream(len(task.train), config.batch_size, config.seed)):
        loop.step(step, index, optimizer, scheduler)
        if loop.should_eval(step) and loop.validate(step):
            break
    loop.finish()
    n_params = sum(p.numel() for g in params for p in (g["params"] if isinstance(g, dict) else [g]))
    validation = loop.final_scores or evaluate(model, data["validation"], config.eval_batch_size)
    return loop.result(n_params, validation, evaluate(model, data["test"], config.eval_batch_size))


class _Loop:
    """State of one `fit`: timing, loss average, validation history, best weights for early stopping."""

    def __init__(self, model, data, config: TrainConfig, total: int, progress: bool):
        from tqdm import tqdm

        self.model, self.data, self.config, self.total = model, data, config, total
        self.bar = tqdm(total=total, file=sys.stderr, leave=False, desc="train", disable=not progress)
        self.train_s, self.steps, self.loss_avg, self.history = 0.0, 0, None, []
        self.best_loss, self.best_step, self.best_state, self.bad_evals = math.inf, 0, None, 0
        self.last_scores, self.final_scores = (0, {}), None
        model.train()

    def step(self, step, index, optimizer, scheduler):
        """One optimizer step on the rows at `index`; timed."""
        start = time.perf_counter()
        input_ids, mask, targets = collate(self.data["train"], index)
        loss = task_loss(forward(self.model, input_ids, mask), targets, self.data["train"].kind)
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
        return len(self.data["validation"].ids) > 0 and (step == self.total or (every and step % every == 0))

    def validate(self, step) -> bool:
        """Score validation, record it, keep the best weights; True when early stopping says stop."""
        scores = evaluate(self.model, self.data["validation"], self.config.eval_batch_size)
        metric = primary_metric(self.data["validation"].kind)
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


# ------------------------------------------------------------------------------------------- the baselines

@dataclass(frozen=True)
class BaselineReport:
    task: str
    method: str
    output: str
    adapter_params: int  # LoRA A/B or VeRA vectors (0 for head-only)
    head_params: int
    bytes: int  # the weights file: adapter_model.safetensors or head.safetensors
    wall_s: float  # load + train + evaluate + save
    result: TrainResult

    def summary(self) -> str:
        """The one-line result: test metric, params, bytes, time."""
        kind_metric = "accuracy" if "accuracy" in self.result.test else "pearson"
        extra = "" if kind_metric == "accuracy" else f" (MSE {self.result.test.get('mse', float('nan')):.4f})"
        return (f"{self.task} {self.method}: test {kind_metric} {self.result.test.get(kind_metric, float('nan')):.4f}{extra} | "
                f"trainable {self.adapter_params:,} adapter + {self.head_params:,} head | {self.bytes:,} bytes | "
                f"{self.wall_s:.1f} s wall, {self.result.s_per_step:.3f} s/step x {self.result.steps}")


def peft_config(method: str, rank: int, alpha: float, targets, head: str, seed: int):
    """LoraConfig / VeraConfig for sequence classification with the task head in modules_to_save."""
    from peft import LoraConfig, TaskType, VeraConfig

    common = dict(target_modules=list(targets), modules_to_save=[head], task_type=TaskType.SEQ_CLS)
    if method == "lora":
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, **common)
    if method == "vera":
        return VeraConfig(r=rank, vera_dropout=0.0, projection_prng_key=seed, save_projection=True, **common)
    raise ValueError(f"method {method!r}: use one of {', '.join(METHODS)}")


def baseline_model(path: Path, num_labels: int, method: str, rank: int = 8, alpha: float = 16,
                   targets=("query", "value"), seed: int = 0):
    """Base model + head (seeded init) with the method's trainable parameters; head-only freezes all but the head."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {', '.join(METHODS)}")
    torch.manual_seed(seed)
    net = load_model(path, num_labels)
    head = head_module(net)
    if method == "head":
        for name, p in net.named_parameters():
            p.requires_grad_(name.split(".")[0] == head)
        return net
    from peft import get_peft_model

    return get_peft_model(net, peft_config(method, rank, alpha, targets, head, seed))


def count_params(model, head: str) -> tuple[int, int]:
    """(adapter, head) trainable parameter counts; head = names with the head module as a component."""
    adapter = head_count = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if head in name.split("."):
                head_count += p.numel()
            else:
                adapter += p.numel()
    return adapter, head_count


def train_lora(task: Task, output, *, method: str = "lora", rank: int = 8, alpha: float = 16, targets=("query", "value"),
               model=None, config: TrainConfig = TrainConfig(), overwrite: bool = False, progress: bool = True) -> BaselineReport:
    """Train a LoRA / VeRA / head-only baseline on `task` and write it to `output` (PEFT folder, portable base id)."""
    start = time.perf_counter()
    path = resolve_model(model)
    if Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists; pass --overwrite or choose another output")
    net = baseline_model(path, task.num_labels, method, rank, alpha, targets, config.seed)
    head = head_module(net.base_model.model if method != "head" else net)
    adapter_params, head_params = count_params(net, head)
    result = fit(net, task, load_tokenizer(path), config, progress=progress)
    settings = {"method": method, "rank": rank, "alpha": alpha, "targets": list(targets)}
    nbytes = save_baseline(net, output, portable_model_id(path), task, settings, config, head, overwrite)
    report = BaselineReport(task.name, method, str(output), adapter_params, head_params, nbytes, 0.0, result)
    report = replace(report, wall_s=round(time.perf_counter() - start, 2))
    _write_training_json(Path(output), task, settings, config, report)
    return report


# ------------------------------------------------------------------------------------------------- writing

def save_baseline(net, output, base_id: str, task: Task, settings: dict, config: TrainConfig, head: str, overwrite: bool) -> int:
    """Write the PEFT folder (or head.safetensors for head-only) atomically; returns the weights file's bytes."""
    with atomic_dir(output, overwrite) as tmp:
        if settings["method"] == "head":
            from safetensors.torch import save_file

            module = getattr(net, head)
            save_file({f"{head}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp / HEAD_WEIGHTS),
                      metadata={"base_model": base_id})
            weights = HEAD_WEIGHTS
        else:
            net.save_pretrained(str(tmp), safe_serialization=True)
            portable_config(tmp, base_id, head)
            weights = ADAPTER_WEIGHTS
        (tmp / "README.md").write_text(model_card(base_id, task, settings, config))
        size = (tmp / weights).stat().st_size
    return size


def portable_config(folder: Path, base_id: str, head: str):
    """PEFT writes the absolute base folder (-> portable id) and SEQ_CLS's modules_to_save [head, head, "score"] (-> [head])."""
    cfg_path = Path(folder) / ADAPTER_CONFIG
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_id
    cfg["modules_to_save"] = [head]
    cfg["inference_mode"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def model_card(base_id: str, task: Task, settings: dict, config: TrainConfig) -> str:
    """A short model card (PEFT's template would carry the local base path)."""
    labels = ", ".join(task.labels) if task.labels else "regression (one output)"
    return (f"---\nbase_model: {base_id}\nlibrary_name: peft\ntags:\n- edge-lorax\n- {settings['method']}\n---\n\n"
            f"# {task.name} ({settings['method']})\n\nTrained by `edge-lorax train-lora` on `{task.name}` ({task.kind}; "
            f"labels: {labels}). Settings and metrics: `{TRAINING_JSON}`.\n")


def _write_training_json(folder: Path, task: Task, settings: dict, config: TrainConfig, report: BaselineReport):
    """training.json: task, labels, settings, config, metrics, params, bytes, timings, library versions."""
    import peft
    import transformers

    data = {"task": task.name, "kind": task.kind, "labels": list(task.labels),
            "rows": {s: len(task.split(s)) for s in SPLITS}, **settings, "config": asdict(config),
            "adapter_params": report.adapter_params, "head_params": report.head_params, "bytes": report.bytes,
            "steps": report.result.steps, "s_per_step": report.result.s_per_step, "best_step": report.result.best_step,
            "validation": _rounded(report.result.validation), "test": _rounded(report.result.test),
            "history": [list(h) for h in report.result.history],
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
            "threads": torch.get_num_threads()}
    (folder / TRAINING_JSON).write_text(json.dumps(data, indent=1) + "\n")


def _rounded(scores: dict) -> dict:
    return {k: round(v, 6) for k, v in scores.items()}
