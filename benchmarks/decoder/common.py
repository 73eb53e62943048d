"""What the decoder benchmarks share: the SmolLM2 source family (tasks, folder names), row caps and the schedule.

The decoder is the embedded `smollm2` (SmolLM2-135M-Instruct, converted once into the cache by edge_lorax). Splits
are each task's own seeded split, capped so that one CPU run stays minutes: the first TRAIN_ROWS / VAL_ROWS /
TEST_ROWS rows (splits are already seeded-shuffled). Does not train or report anything itself.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_lorax.builder.data import Split, load_task
from edge_lorax.builder.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ROOT / "adapters-smollm2"
MODEL = "smollm2"
# Twelve source tasks: six sentiment (VADER), SMS spam, TREC question type, four disaster-response categories.
# 20 Newsgroups is left out: its posts run to ~370 tokens (median) and its prompt lists 20 long label names.
SOURCE_TASKS = ("vader:tweets-binary", "vader:movies-binary", "vader:amazon-binary", "vader:nyt-binary",
                "vader:tweets-3class", "vader:amazon-3class", "spam:sms", "trec:coarse", "disaster:request",
                "disaster:food", "disaster:medical_help", "disaster:weather_related")
TRAIN_ROWS, VAL_ROWS, TEST_ROWS = 2000, 100, 200
# Sources trained on the task's own class rates; these three collapsed to the majority answer ("no") on them, so
# they were retrained on class-balanced rows (the README lists both).
BALANCED_SOURCES = ("disaster:food", "disaster:medical_help", "disaster:weather_related")
# LoRA r=8 on q_proj/v_proj of all 30 layers; 60 AdamW steps of batch 8, prompt + answer <= 96 tokens. Sources are
# scored on their test rows only (no validation rows: nothing is tuned on them).
SOURCE_CONFIG = TrainConfig(lr=2e-3, batch_size=8, max_length=96, steps=60, seed=0, eval_every=0, eval_batch_size=16)
LORA = {"method": "lora", "rank": 8, "alpha": 16, "targets": ("q_proj", "v_proj")}


def folder_name(spec: str) -> str:
    """vader:tweets-binary -> tweets-binary; spam:sms -> spam-sms; disaster:food -> disaster-food."""
    family, name = spec.split(":", 1)
    return name if family == "vader" else f"{family}-{name}".replace("_", "-")


def capped_task(spec: str, train_rows: int | str = TRAIN_ROWS, seed: int = 0, val_rows: int = VAL_ROWS,
                balanced: bool = False):
    """The task with its splits cut to the first rows ("all": the whole train split up to TRAIN_ROWS). balanced: the
    training rows are the first n / labels of each class (all of a smaller class), in split order; validation and
    test keep the task's own class rates."""
    task = load_task(spec, seed=seed)
    n = TRAIN_ROWS if train_rows == "all" else int(train_rows)
    cut = lambda s, k: Split(s.texts[:k], s.targets[:k])  # noqa: E731
    train = balanced_rows(task.train, n, len(task.labels)) if balanced else cut(task.train, n)
    return replace(task, train=train, validation=cut(task.validation, val_rows), test=cut(task.test, TEST_ROWS))


def balanced_rows(split: Split, n: int, labels: int) -> Split:
    """Up to n // labels rows of each class, the first ones in split order, kept in split order."""
    targets = np.asarray(split.targets)
    keep = np.sort(np.concatenate([np.flatnonzero(targets == c)[:n // labels] for c in range(labels)]))
    return Split(tuple(split.texts[i] for i in keep), targets[keep])
