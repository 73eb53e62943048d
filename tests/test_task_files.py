"""Task files read as written or refused (issue 25, cause 3): every bad file in helpers.task_cases is one line naming
the file (and its line) from the library and from `edge-lorax data`; the formerly mishandled good files load; the
train-many folder listing takes every suffix the reader takes, in any case; a Hypothesis fuzz writes random rows
(and random bytes) and reads back either those rows or one InputError line naming the file.
"""

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_lorax.cli import cli
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.tasks import DataError, read_rows, read_task
from helpers.task_cases import BAD, EXTRA, GOOD, GOOD_CASES, LONG, csv_text

BAD_IDS = [case[0] for case in BAD]


def _write(folder: Path, name: str, content) -> Path:
    """One case's file (None: a folder of that name); its companion files beside it."""
    for extra, text in EXTRA.items():
        (folder / extra).write_text(text, encoding="utf-8")
    path = folder / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _kwargs(folder: Path, kwargs: dict) -> dict:
    return {k: str(folder / v) if k in ("validation", "test") else v for k, v in kwargs.items()}


# ---------------------------------------------------------------------------------------------- refusals

def test_at_least_25_bad_inputs():
    assert len(BAD) >= 25 and len(set(BAD_IDS)) == len(BAD)


@pytest.mark.parametrize("case", BAD, ids=BAD_IDS)
def test_bad_file_is_one_line_naming_file_and_line(case, tmp_path):
    _, name, content, kwargs, fragments = case
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_task(path, **_kwargs(tmp_path, kwargs))
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    assert str(tmp_path / fragments[0].split(":")[0]) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


CLI_OPTIONS = {"kind": "--kind", "text_column": "--text-column", "label_column": "--label-column"}


@pytest.mark.parametrize("case", [c for c in BAD if set(c[3]) <= set(CLI_OPTIONS)], ids=lambda c: c[0])
def test_cli_data_exits_1_with_one_line(case, tmp_path):
    _, name, content, kwargs, fragments = case
    path = _write(tmp_path, name, content)
    args = ["data", str(path)] + [x for k, v in kwargs.items() for x in (CLI_OPTIONS[k], v)]
    result = CliRunner().invoke(cli, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert name in lines[0] and fragments[-1] in lines[0] and "Traceback" not in result.output


def test_cli_data_in_a_fresh_process_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    path = _write(tmp_path, "dup.csv", "text,label,label\na,b,c\n")
    done = subprocess.run([sys.executable, "-m", "edge_lorax", "data", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"Error: {path}:1: column 'label' appears twice in the header "
                                                "(columns 2 and 3); rename or delete one"]


# ------------------------------------------------------------------------------------------- what loads

@pytest.mark.parametrize("case", GOOD_CASES, ids=[c[0] for c in GOOD_CASES])
def test_formerly_mishandled_files_load_as_written(case, tmp_path):
    cid, name, content, kwargs = case
    path = _write(tmp_path, name, content)
    task = read_task(path, **kwargs)
    texts = task.train.texts + task.validation.texts + task.test.texts
    if cid == "280KB-text":
        assert texts.count(LONG) == 3
    elif cid == "quoted-newlines":
        assert sorted(texts) == sorted(f"{t}\nsecond line, with comma" for t, _ in GOOD)
    elif cid == "json-number-spelling":
        assert read_rows(path, "text", "label") == [("a", "1e-7"), ("b", "2.50"), ("c", "3")]
        assert sorted(task.train.targets.tolist()) == pytest.approx([1e-7, 2.5, 3.0])
    else:
        assert sorted(texts) == sorted(t for t, _ in GOOD) and task.labels == ("neg", "pos")


def test_long_text_loads_without_the_builder_raising_csvs_limit(tmp_path):
    """The runtime reads task files without builder.tasks_pkg (which raises csv's limit at import): a fresh process."""
    import subprocess
    import sys

    path = _write(tmp_path, "long.csv", csv_text([(LONG, "pos"), ("short", "neg")] * 3))
    code = ("import sys; from edge_lorax.formats.tasks import read_task; t = read_task(sys.argv[1]); "
            "assert 'edge_lorax.builder' not in sys.modules; print(max(map(len, t.train.texts + t.validation.texts + t.test.texts)))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == str(len(LONG)), done.stderr[-1000:]


def test_json_labels_keep_the_files_spelling_and_true_false(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"text": "a", "label": true}\n{"text": "b", "label": false}\n{"text": 7, "label": "x"}\n')
    assert read_rows(path, "text", "label") == [("a", "true"), ("b", "false"), ("7", "x")]


def test_labels_are_stripped_and_texts_kept(tmp_path):
    path = _write(tmp_path, "s.csv", 'text,label\n"  padded text ", pos \nother,neg\n')
    assert read_rows(path, "text", "label") == [("  padded text ", "pos"), ("other", "neg")]


def test_twenty_numeric_classes_load_and_sort_numerically(tmp_path):
    path = _write(tmp_path, "stars.csv", csv_text([(f"r{i}", str(i % 20 + 1)) for i in range(60)]))
    assert read_task(path).labels == tuple(str(i) for i in range(1, 21))


# ---------------------------------------------------------------------------------- the train-many listing

def test_train_many_lists_every_suffix_in_any_case(tmp_path):
    from edge_lorax.builder.fleet import data_files

    for name in ("alice.csv", "bob.CSV", "carol.Jsonl", "dave.TSV", "erin.ndjson"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in data_files(tmp_path)] == ["alice.csv", "bob.CSV", "carol.Jsonl", "dave.TSV", "erin.ndjson"]


@pytest.mark.parametrize("names, fragment", [
    (["alice.csv", "notes.txt"], "'notes.txt' is not a task file"),
    (["alice.csv", "bob.json"], "'bob.json' is not a task file"),
    (["alice.csv", "Alice.jsonl"], "Alice.jsonl and alice.csv are both user 'Alice'"),
    ([], "no .csv/.tsv/.jsonl files"),
])
def test_train_many_refuses_what_it_would_skip(tmp_path, names, fragment):
    from edge_lorax.builder.fleet import data_files

    for name in names:
        (tmp_path / name).write_text("x")
    with pytest.raises(InputError, match=fragment.replace(".", r"\.")) as info:
        data_files(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


# ------------------------------------------------------------------------------------------------ fuzz

FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12) | st.sampled_from(
    ["", " ", "a,b", 'say "hi"', "two\nlines", "cr\rlf\r\n", "tab\there", "\ufeffbom", "\x00", "Pos", "pos", "1", "1.0"])
ROWS = st.lists(st.tuples(TEXT, TEXT), min_size=0, max_size=8)


def _write_rows(path: Path, rows, fmt: str):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in rows),
                        encoding="utf-8")
        return
    out = io.StringIO()
    writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8", newline="")


def _refusal(error: InputError, path: Path):
    message = str(error)
    assert isinstance(error, InputError) and "\n" not in message and str(path) in message, message


@FUZZ
@given(rows=ROWS, fmt=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_fuzz_rows_round_trip_or_one_line_refusal(rows, fmt):
    folder = Path(tempfile.mkdtemp())
    try:
        path = folder / f"t.{fmt}"
        _write_rows(path, rows, fmt)
        try:
            got = read_rows(path, "text", "label")
        except InputError as e:
            _refusal(e, path)
            return
        assert got == [(t, lab.strip()) for t, lab in rows]
        try:
            task = read_task(path, fractions=(1.0, 0.0, 0.0))
        except InputError as e:
            _refusal(e, path)
            return
        assert sorted(task.train.texts) == sorted(t for t, _ in rows)
        assert sorted(task.labels[i] for i in task.train.targets) == sorted(lab.strip() for _, lab in rows)
    finally:
        shutil.rmtree(folder)


@FUZZ
@given(data=st.binary(max_size=200) | ROWS.map(lambda r: csv_text([(t.replace(",", ""), lab) for t, lab in r]).encode()),
       cut=st.integers(0, 300), flip=st.integers(0, 255), suffix=st.sampled_from([".csv", ".TSV", ".jsonl"]),
       kind=st.sampled_from(["classification", "regression"]))
def test_fuzz_bytes_load_or_one_line_refusal(data, cut, flip, suffix, kind):
    folder = Path(tempfile.mkdtemp())
    try:
        path = folder / f"t{suffix}"
        damaged = bytearray(data)
        if damaged:
            damaged[cut % len(damaged)] ^= flip
        path.write_bytes(bytes(damaged))
        try:
            task = read_task(path, kind=kind, fractions=(1.0, 0.0, 0.0))
        except InputError as e:
            _refusal(e, path)
            return
        assert all(isinstance(t, str) and t.strip() for t in task.train.texts)
    finally:
        shutil.rmtree(folder)
