"""Task files: text + label rows from CSV, TSV or JSONL into a `Task` with train / validation / test `Split`s.

Classification targets are int64 indices into `Task.labels` (sorted names, numerically when all are numbers);
regression targets are float32. A single file is split by a seeded permutation (same rows, fractions and seed: same
split on any machine); a validation or test file replaces that cut. Errors are one-line `DataError`s naming the file,
the row or column, and the fix. Torch-free, so the runtime reads a person's local examples with it too. Does not
know the built-in tasks (VADER, package data sets: edge_lorax.builder.data, builder.tasks_pkg).
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_lorax.formats.errors import InputError

CLASSIFICATION, REGRESSION = "classification", "regression"
KINDS = (CLASSIFICATION, REGRESSION)
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def target_dtype(kind: str):
    """Targets' dtype, in a Split and as the gradient graph's `labels` input: int64 class ids, float32 regression."""
    return np.float32 if kind == REGRESSION else np.int64


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

def read_rows(path, text_column: str, label_column: str) -> list[tuple[str, object]]:
    """(text, raw label) pairs from a .csv, .tsv or .jsonl file; errors name the file, column and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a .csv, .tsv or .jsonl file or a built-in task "
                        "(vader:tweets-binary, ..., spam:sms, trec:coarse, disaster:request, 20ng:topic)")
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


def regression_targets(raw_labels, path) -> np.ndarray:
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
    parts = {"train": read_rows(path, text_column, label_column)}
    for split, file in (("validation", validation), ("test", test)):
        if file is not None:
            parts[split] = read_rows(file, text_column, label_column)
    files = {"train": path, "validation": validation, "test": test}
    labels = _class_names([label for _, label in parts["train"]], path) if kind == CLASSIFICATION else ()
    splits = {s: _split_from_rows(rows, kind, labels, files[s]) for s, rows in parts.items()}
    try:
        splits = _fill_missing_splits(splits, fractions, seed)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    return Task(name or Path(path).stem, kind, labels, splits["train"], splits["validation"], splits["test"])


def _split_from_rows(rows, kind, labels, path) -> Split:
    """Rows -> Split with targets for the task kind."""
    texts = tuple(text for text, _ in rows)
    raw = [label for _, label in rows]
    targets = _class_targets(raw, labels, path) if kind == CLASSIFICATION else regression_targets(raw, path)
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
