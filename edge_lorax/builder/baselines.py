"""Baselines: PEFT LoRA, PEFT VeRA and head-only, trained by the shared loop (edge_lorax.builder.loop).

`train_lora(task, output, method=...)` builds the PEFT model, fits it and writes a PEFT adapter folder whose base
id is portable (never a local path), with a training.json beside it; options, --max-length against the model and
the output's writability are checked before any model is loaded. Two PEFT task types: SEQ_CLS (a task head, saved
in modules_to_save) and CAUSAL_LM (a decoder answers with the label word; no head). Does not train EigenLoRAx
coefficients (edge_lorax.builder.train does).
"""

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from edge_lorax.builder.data import SPLITS, Task
from edge_lorax.builder.loop import TrainConfig, TrainResult, fit, objective_for
from edge_lorax.builder.models import (
    CAUSAL_LM,
    SEQ_CLS,
    check_max_length,
    default_targets,
    head_module,
    load_for_task,
    load_tokenizer,
    portable_model_id,
    resolve_model,
    task_type,
)
from edge_lorax.formats.atomic import atomic_dir, check_output
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAINING_JSON

METHODS = ("lora", "vera", "head")
METHOD_LR = {"lora": 2e-3, "vera": 1e-2, "head": 5e-3}  # CLI defaults (LoRA 5e-4 reached 0.68 vs 2e-3 0.91 on tweets in 60 steps)
HEAD_WEIGHTS = "head.safetensors"


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


def peft_config(method: str, rank: int, alpha: float, targets, head: str | None, seed: int, kind: str = SEQ_CLS):
    """LoraConfig / VeraConfig: SEQ_CLS with the task head in modules_to_save, or CAUSAL_LM (head None).

    targets: module names, or PEFT's "all-linear" (every Linear but the output layer)."""
    from peft import LoraConfig, VeraConfig

    modules = "all-linear" if tuple(targets) == ("all-linear",) else list(targets)
    common = dict(target_modules=modules, modules_to_save=[head] if head else None, task_type=kind)
    if method == "lora":
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, **common)
    if method == "vera":
        return VeraConfig(r=rank, vera_dropout=0.0, projection_prng_key=seed, save_projection=True, **common)
    raise InputError(f"method {method!r}: use one of {', '.join(METHODS)}")


def _check_baseline_options(method: str, rank, alpha, targets, kind: str = SEQ_CLS):
    """--method, --rank >= 1, --alpha > 0 and finite, --targets non-empty: before any model is loaded."""
    if method not in METHODS:
        raise InputError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    if method == "head" and kind == CAUSAL_LM:
        raise InputError("--method head trains a task head, and a causal LM answers with label words instead; pass "
                         "--task-type SEQ_CLS for a head on the decoder, or use --method lora")
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
        raise InputError(f"--rank {rank!r}: an integer >= 1 is needed")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0):
        raise InputError(f"--alpha {alpha!r}: a finite number > 0 is needed (0 makes the LoRA a no-op)")
    if method != "head" and not [t for t in targets if t.strip()]:
        raise InputError("--targets is empty; name the Linear modules to adapt, e.g. query,value")


def baseline_model(path: Path, num_labels: int, method: str, rank: int = 8, alpha: float = 16,
                   targets=("query", "value"), seed: int = 0, kind: str = SEQ_CLS):
    """Base model (+ head, seeded init, for SEQ_CLS) with the method's trainable parameters; head-only freezes all
    but the head."""
    if method not in METHODS:
        raise InputError(f"method {method!r}: use one of {', '.join(METHODS)}")
    torch.manual_seed(seed)
    net = load_for_task(path, kind, num_labels)
    head = head_module(net) if kind == SEQ_CLS else None
    if method == "head":
        for name, p in net.named_parameters():
            p.requires_grad_(name.split(".")[0] == head)
        return net
    from peft import get_peft_model

    return get_peft_model(net, peft_config(method, rank, alpha, targets, head, seed, kind))


def count_params(model, head: str | None) -> tuple[int, int]:
    """(adapter, head) trainable parameter counts; head = names with the head module as a component (None: no head)."""
    adapter = head_count = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if head in name.split("."):
                head_count += p.numel()
            else:
                adapter += p.numel()
    return adapter, head_count


def train_lora(task: Task, output, *, method: str = "lora", rank: int = 8, alpha: float = 16, targets=None,
               model=None, config: TrainConfig = TrainConfig(), overwrite: bool = False, progress: bool = True,
               kind: str | None = None) -> BaselineReport:
    """Train a LoRA / VeRA / head-only baseline on `task` and write it to `output` (PEFT folder, portable base id).

    targets None: the model type's default (models.default_targets); kind None: models.task_type's pick."""
    start = time.perf_counter()
    path = resolve_model(model)
    kind = task_type(path, kind)
    targets = tuple(targets or default_targets(path))
    _check_baseline_options(method, rank, alpha, targets, kind)
    check_max_length(path, config.max_length)
    check_output(output, overwrite)
    tokenizer = load_tokenizer(path)
    objective = objective_for(kind, task, tokenizer, config.max_length)  # refuses what the task type cannot train
    net = baseline_model(path, task.num_labels, method, rank, alpha, targets, config.seed, kind)
    head = None if kind == CAUSAL_LM else head_module(net.base_model.model if method != "head" else net)
    adapter_params, head_params = count_params(net, head)
    result = fit(net, task, tokenizer, config, progress=progress, objective=objective)
    settings = {"method": method, "task_type": kind, "rank": rank, "alpha": alpha, "targets": list(targets)}
    nbytes = _save_baseline(net, output, portable_model_id(path), task, settings, config, head, overwrite)
    report = BaselineReport(task.name, method, str(output), adapter_params, head_params, nbytes, 0.0, result)
    report = replace(report, wall_s=round(time.perf_counter() - start, 2))
    _write_training_json(Path(output), task, settings, config, report)
    return report


# ------------------------------------------------------------------------------------------------- writing

def _save_baseline(net, output, base_id: str, task: Task, settings: dict, config: TrainConfig, head: str, overwrite: bool) -> int:
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
        (tmp / "README.md").write_text(_model_card(base_id, task, settings, config))
        size = (tmp / weights).stat().st_size
    return size


def portable_config(folder: Path, base_id: str, head: str | None):
    """PEFT writes the absolute base folder (-> portable id) and SEQ_CLS's modules_to_save [head, head, "score"] (-> [head])."""
    cfg_path = Path(folder) / ADAPTER_CONFIG
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_id
    cfg["modules_to_save"] = [head] if head else None
    cfg["inference_mode"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _model_card(base_id: str, task: Task, settings: dict, config: TrainConfig) -> str:
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
