"""Issue 30's wider source family: the 20 Newsgroups one-vs-rest reader and the class balancing of the wide trainer."""

import sys
from pathlib import Path

import numpy as np
import pytest

from edge_lorax.builder.data import Split, Task, frozen, load_task
from edge_lorax.builder.tasks_pkg import NEWSGROUPS, one_vs_rest
from edge_lorax.formats.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _task():
    split = lambda ys: Split(tuple(f"t{i}" for i in range(len(ys))), frozen(np.array(ys, dtype=np.int64)))  # noqa: E731
    return Task("20ng:topic", "classification", ("a", "b", "c"), split([0, 1, 2, 1, 1, 0, 2, 2, 2, 2]),
                split([2, 0]), split([1, 2, 2]))


def test_one_vs_rest_keeps_rows_and_marks_the_label():
    task = one_vs_rest(_task(), "c")
    assert task.labels == ("no", "yes") and task.train.texts == _task().train.texts
    assert task.train.targets.tolist() == [0, 0, 1, 0, 0, 0, 1, 1, 1, 1]
    assert task.test.targets.tolist() == [0, 1, 1] and task.test.targets.dtype == np.int64


def test_unknown_newsgroup_is_refused_without_reading_data():
    assert len(NEWSGROUPS) == 20 and "sci.med" in NEWSGROUPS
    with pytest.raises(InputError, match="20ng:<newsgroup>"):
        load_task("20ng:sci.medicine")


def test_balanced_training_rows():
    from train_sources_wide import balanced

    task, info = balanced(one_vs_rest(_task(), "b"), seed=0)
    assert task.train.targets.tolist().count(1) == task.train.targets.tolist().count(0) == 3
    assert info["train_rows_balanced"] == 6 and info["train_yes_share_natural"] == 0.3
    assert len(task.test) == 3  # under the cut: natural rates kept
