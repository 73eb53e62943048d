"""Data layer: CSV/TSV/JSONL readers, every error message (library and CLI exit code), splits, the VADER family."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.builder.data import (
    VADER_DOMAINS,
    VADER_NEUTRAL,
    VADER_TASKS,
    DataError,
    load_task,
    read_task,
    repo_data_dir,
    split_indices,
    task_summary,
)
from edge_lorax.cli import cli

ROWS = [("good movie", "pos"), ("bad film", "neg"), ("fine, I guess", "neu"), ("awful", "neg"), ("great", "pos")] * 4


def write_csv(path: Path, rows, header=("text", "label"), delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows, keys=("text", "label")):
    path.write_text("".join(json.dumps(dict(zip(keys, r))) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------ readers

@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_reads_every_format_to_the_same_task(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, ROWS)
    else:
        write_csv(path, ROWS, delimiter="," if suffix == ".csv" else "\t")
    task = read_task(path, seed=3)
    assert task.labels == ("neg", "neu", "pos")
    assert task.kind == "classification" and task.num_labels == 3 and task.name == "t"
    assert (len(task.train), len(task.validation), len(task.test)) == (16, 2, 2)
    everything = task.train.texts + task.validation.texts + task.test.texts
    assert sorted(everything) == sorted(t for t, _ in ROWS)
    truth = dict(ROWS)
    for split in (task.train, task.validation, task.test):
        assert [task.labels[i] for i in split.targets] == [truth[t] for t in split.texts]
        assert split.targets.dtype == np.int64 and not split.targets.flags.writeable


def test_quoted_csv_fields_keep_commas_quotes_and_newlines(tmp_path):
    rows = [('he said "no", twice', "a"), ("line one\nline two", "b")] * 5
    task = read_task(write_csv(tmp_path / "q.csv", rows), fractions=(1.0, 0.0, 0.0))
    assert sorted(set(task.train.texts)) == sorted({r[0] for r in rows})


def test_numeric_labels_sort_numerically_and_regression_is_float32(tmp_path):
    rows = [(f"s{i}", str(v)) for i, v in enumerate([10, 2, 1, 2, 10, 1] * 3)]
    path = write_csv(tmp_path / "n.csv", rows)
    assert read_task(path).labels == ("1", "2", "10")
    reg = read_task(path, kind="regression", fractions=(1.0, 0.0, 0.0))
    assert reg.labels == () and reg.num_labels == 1 and reg.train.targets.dtype == np.float32
    assert sorted(reg.train.targets.tolist()) == sorted(float(v) for _, v in rows)


def test_custom_columns_and_jsonl_numbers(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [(f"review {i}", i % 2, "x") for i in range(20)], keys=("review", "stars", "other"))
    task = read_task(path, text_column="review", label_column="stars")
    assert task.labels == ("0", "1")
    assert all(task.labels[y] == str(int(t.split()[1]) % 2) for t, y in zip(task.train.texts, task.train.targets))


def test_given_split_files_are_used_as_is(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    val = write_csv(tmp_path / "val.csv", [("ok", "neu"), ("bad", "neg")])
    test = write_csv(tmp_path / "test.csv", [("super", "pos")])
    task = read_task(train, validation=val, test=test)
    assert len(task.train) == len(ROWS) and task.validation.texts == ("ok", "bad") and task.test.texts == ("super",)
    assert task.validation.targets.tolist() == [1, 0] and task.test.targets.tolist() == [2]
    only_test = read_task(train, test=test, fractions=(0.8, 0.1, 0.1))
    assert only_test.test.texts == ("super",) and len(only_test.validation) == 2 and len(only_test.train) == 18


# ------------------------------------------------------------------------------------------------- errors

def error_cases(tmp_path):
    """(path, read_task kwargs, fragments the message must contain) for every documented error."""
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\nnot json\n')
    weird = tmp_path / "data.xlsx"
    weird.write_text("x")
    return [
        (write_csv(tmp_path / "cols.csv", ROWS, header=("sentence", "y")), {},
         ["cols.csv", "no column 'text'", "available columns: sentence, y"]),
        (empty, {}, ["empty.csv", "empty"]),
        (header_only, {}, ["header.csv", "no data rows"]),
        (write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x"), ("c", "x")]), {}, ["one.csv", "only one class ('x')"]),
        (write_csv(tmp_path / "reg.csv", [("a", "1.5"), ("b", "high"), ("c", "2")]), {"kind": "regression"},
         ["reg.csv", "'high'", "data row 2", "not a number"]),
        (write_csv(tmp_path / "nan.csv", [("a", "1.5"), ("b", "nan"), ("c", "2")]), {"kind": "regression"}, ["nan.csv", "NaN"]),
        (write_csv(tmp_path / "blank.csv", [("a", "x"), ("", "y"), ("c", "y")]), {}, ["blank.csv", "data row 2", "empty 'text'"]),
        (bad_json, {}, ["bad.jsonl", "not JSON"]),
        (weird, {}, ["data.xlsx", "unknown file type '.xlsx'"]),
        (tmp_path / "missing.csv", {}, ["missing.csv", "no such file"]),
    ]


def test_every_error_is_one_line_naming_the_file(tmp_path):
    for path, kwargs, fragments in error_cases(tmp_path):
        with pytest.raises(DataError) as info:
            read_task(path, **kwargs)
        message = str(info.value)
        assert "\n" not in message
        for fragment in fragments:
            assert fragment in message, (fragment, message)


def test_cli_exits_nonzero_with_the_message(tmp_path):
    runner = CliRunner()
    for path, kwargs, fragments in error_cases(tmp_path):
        args = ["data", str(path)] + (["--kind", kwargs["kind"]] if kwargs else [])
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert fragments[-1] in result.output and "Traceback" not in result.output
    bad = runner.invoke(cli, ["train-lora", "--data", str(tmp_path / "cols.csv"), "-o", str(tmp_path / "out")])
    assert bad.exit_code == 1 and "no column 'text'" in bad.output and not (tmp_path / "out").exists()


def test_unknown_label_in_a_split_file_and_bad_vader_names(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    test = write_csv(tmp_path / "test.csv", [("meh", "mixed")])
    with pytest.raises(DataError, match=r"test.csv: labels \['mixed'\] do not occur in the training data"):
        read_task(train, test=test)
    with pytest.raises(DataError, match="vader:<tweets|movies|amazon|nyt>-<binary|3class|regression>"):
        load_task("vader:tweets-5class")
    with pytest.raises(DataError, match="summing to 1"):
        split_indices(10, (0.5, 0.5, 0.5))


# ------------------------------------------------------------------------------------------------- splits

def test_split_is_deterministic_disjoint_and_seed_dependent():
    a, b, c = split_indices(1000, seed=7), split_indices(1000, seed=7), split_indices(1000, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])
    assert [len(x) for x in a] == [800, 100, 100]
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    assert a[2][:5].tolist() == [410, 845, 48, 986, 725]  # pinned: numpy's PCG64 stream is stable across versions


# -------------------------------------------------------------------------------------------------- VADER

RAW_COUNTS = {"tweets": (4200, 2897, 1299, 4), "movies": (10605, 5242, 5326, 37), "amazon": (3708, 2128, 1482, 98),
              "nyt": (5190, 2204, 2742, 244)}  # rows, valence > 0, < 0, = 0 (the published GroundTruth files)
DUPLICATES = {"tweets": 0, "movies": 2, "amazon": 11, "nyt": 71}


@pytest.mark.parametrize("domain", list(VADER_DOMAINS))
def test_committed_vader_files_match_the_published_counts(domain):
    with open(repo_data_dir() / f"{domain}.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    values = np.array([float(r["valence"]) for r in rows])
    assert (len(rows), (values > 0).sum(), (values < 0).sum(), (values == 0).sum()) == RAW_COUNTS[domain]
    assert len(rows) - len({r["text"] for r in rows}) == DUPLICATES[domain]
    assert values.min() >= -4 and values.max() <= 4


@pytest.mark.parametrize("domain", list(VADER_DOMAINS))
def test_vader_tasks_share_one_split_per_domain(domain):
    rows, pos, neg, zero = RAW_COUNTS[domain]
    binary, three, reg = (load_task(f"vader:{domain}-{t}") for t in ("binary", "3class", "regression"))
    unique = rows - DUPLICATES[domain]
    assert sum(len(reg.split(s)) for s in ("train", "validation", "test")) == unique
    assert (len(reg.train), len(reg.validation)) == (unique - 2 * round(unique * 0.1), round(unique * 0.1))
    for name in ("train", "validation", "test"):
        assert set(binary.split(name).texts) <= set(reg.split(name).texts)
        assert three.split(name).texts == reg.split(name).texts
    assert not set(reg.train.texts) & set(reg.test.texts)
    value = dict(zip(reg.test.texts, reg.test.targets.tolist()))
    assert all((value[t] > 0) == bool(y) and value[t] != 0 for t, y in zip(binary.test.texts, binary.test.targets))
    expect = [0 if value[t] < -VADER_NEUTRAL else 2 if value[t] > VADER_NEUTRAL else 1 for t in three.test.texts]
    assert three.test.targets.tolist() == expect
    assert binary.labels == ("negative", "positive") and three.labels == ("negative", "neutral", "positive")
    assert reg.kind == "regression" and binary.kind == three.kind == "classification"


def test_vader_family_is_twelve_named_tasks_and_deterministic():
    assert len(VADER_TASKS) == 12 and VADER_TASKS[0] == "vader:tweets-binary"
    a, b = load_task("vader:amazon-3class", seed=1), load_task("vader:amazon-3class", seed=1)
    assert a.test.texts == b.test.texts and np.array_equal(a.test.targets, b.test.targets)
    assert load_task("vader:amazon-3class", seed=2).test.texts != a.test.texts
    summary = task_summary(load_task("vader:tweets-3class"))
    assert summary["test"]["rows"] == 420 and sum(summary["test"][k] for k in ("negative", "neutral", "positive")) == 420


def test_cli_data_prints_the_summary_as_json():
    result = CliRunner().invoke(cli, ["data", "vader:nyt-binary"])
    assert result.exit_code == 0
    out = json.loads(result.output)
    assert out["task"] == "vader:nyt-binary" and out["labels"] == ["negative", "positive"]
    assert out["train"]["rows"] + out["validation"]["rows"] + out["test"]["rows"] == 4878  # 5190 - 71 dupes - 241 zero


def test_too_few_rows_to_split_names_the_file(tmp_path):
    from edge_lorax.formats.tasks import DataError, read_task

    path = tmp_path / "tiny.csv"
    path.write_text("text,label\na,x\nb,y\nc,x\n")
    with pytest.raises(DataError, match=rf"^{path}: 3 rows are too few to split"):
        read_task(path)
