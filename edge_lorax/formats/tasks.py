"""Task files: text + label rows from CSV, TSV or JSONL into a `Task` with train / validation / test `Split`s.

Classification targets are int64 indices into `Task.labels` (sorted names, numerically when all are numbers);
regression targets are float32. A single file is split by a seeded permutation (same rows, fractions and seed: same
split on any machine); a validation or test file replaces that cut. Errors are one-line `DataError`s naming the file,
the line (`path:line:`) and the fix. Torch-free, so the runtime reads a person's local examples with it too. Does not
know the built-in tasks (VADER, package data sets: edge_lorax.builder.data, builder.tasks_pkg).

Nothing in a file is dropped or reinterpreted; what cannot be read as written is refused. The suffix picks the
reader in any case (`.CSV` is CSV). The file must be UTF-8 (a BOM is dropped) without NUL bytes. CSV/TSV: csv
quoting, strictly (a quote must close before the delimiter), no field-size limit below the file's size, each header
name once and every row as wide as the header. JSONL: one object per line, each key once; values are strings,
numbers (kept as the file spells them) or true/false; objects, lists, NaN/Infinity are refused. Texts are kept as
written, labels are stripped of surrounding spaces. Classes must be spelled one way across the task's files
(`Positive`/`positive` or `1`/`1.0` are refused, not merged, not split: what the author meant is theirs to say);
more than MAX_NUMERIC_CLASSES distinct numbers, or fewer than two rows per class, is refused as classes (a
regression target, or the wrong --label-column).
"""

import codecs
import csv
import io
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_lorax.formats.errors import InputError

CLASSIFICATION, REGRESSION = "classification", "regression"
KINDS = (CLASSIFICATION, REGRESSION)
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUFFIXES = (".csv", ".tsv", ".tab", *JSONL_SUFFIXES)  # compared lower-cased: bob.CSV is a CSV file
MAX_NUMERIC_CLASSES = 20  # more distinct numeric labels than this: a regression target, refused as classes
FLOAT32_MAX = float(np.finfo(np.float32).max)


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

def read_rows(path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    """(text, label) pairs from a .csv, .tsv or .jsonl file; labels are strings as the file spells them (JSON
    numbers too, e.g. 1e-7 stays "1e-7"; true/false as JSON writes them). Errors name the file, the line and the fix."""
    return [(text, label) for _, text, label in _read_lines(Path(path), text_column, label_column)]


def _read_lines(path: Path, text_column: str, label_column: str) -> list[tuple[int, str, str]]:
    """(line, text, label) of every data row; every row must have both, non-blank."""
    if not path.is_file():
        raise DataError(f"{path}: {'a folder' if path.is_dir() else 'no such file'}; pass a .csv, .tsv or .jsonl file "
                        "(the host's train / train-lora / data also take a built-in task such as vader:tweets-binary or "
                        "spam:sms; personalize, on the device, reads files only)")
    if text_column == label_column:
        raise DataError(f"{path}: --text-column and --label-column are both {_short(text_column)}; name two columns")
    records, columns = _read_records(path)
    if not records:
        raise DataError(f"{path}: no data rows; {'the file is empty' if not columns else 'the header is all there is'} "
                        "(a task needs a header and at least two rows)")
    for column in (text_column, label_column):
        _check_column(path, column, columns)
    return [_row(path, row, line, fields, text_column, label_column)
            for row, (line, fields) in enumerate(records, start=1)]


def _check_column(path: Path, column: str, columns: list):
    """A missing column names the available ones, and the likely slip (padded names, the other delimiter)."""
    if column in columns:
        return
    hint = ""
    padded = [c for c in columns if isinstance(c, str) and c.strip() == column]
    if padded:
        hint = f"; the header spells it {_short(padded[0])}: remove the spaces around the delimiter"
    elif len(columns) == 1 and isinstance(columns[0], str) and ("\t" in columns[0] or "," in columns[0]):
        hint = f"; the header is one field holding {'tabs' if chr(9) in columns[0] else 'commas'}: name the file .tsv or .csv to match"
    raise DataError(f"{path}: no column {_short(column)}; available columns: {_column_names(columns)} "
                    f"(choose with --text-column / --label-column){hint}")


def _row(path, row, line, fields, text_column, label_column) -> tuple[int, str, str]:
    """(line, text, label); a missing or blank value is an error naming the line and the data row (1-based, header
    not counted). Labels are stripped of surrounding spaces; texts are kept as written."""
    text, label = fields.get(text_column), fields.get(label_column)
    where = f"{path}:{line}: data row {row}"
    if text is None or not text.strip():
        raise DataError(f"{where} has an empty {_short(text_column)}; remove the row or fill it in")
    if label is None or label.strip() == "":
        raise DataError(f"{where} has an empty {_short(label_column)}; remove the row or fill it in")
    return line, text, label.strip()


def _read_records(path: Path) -> tuple[list, list]:
    """([(line, {column: str})], columns) by file type (the suffix in any case); the whole file is decoded first."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type {_short(suffix)}; use .csv, .tsv or .jsonl")
    text = _decode(path)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, text)
    return _read_delimited(path, text, "," if suffix == ".csv" else "\t")


def _decode(path: Path) -> str:
    """The file as UTF-8 text (a BOM is dropped); UTF-16/32, undecodable bytes and NUL bytes are refused by line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.strerror or type(e).__name__}); check the file's permissions") from e
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}: UTF-16 or UTF-32 text (it starts with that byte-order mark); save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}: {e.reason}); "
                        "save the file as UTF-8") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"{path}:{line}: a NUL byte; this is not a text file (or a UTF-16 one): save it as UTF-8 text")
    return text


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[list, list]:
    """csv rows with the header's names; quoted fields may hold delimiters, quotes ("") and newlines. Strict: a
    duplicate or extra column, a row of another width or broken quoting is refused naming the line."""
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))  # a long text is a field, not an error
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, records, line = None, [], 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return records, header or []
        except csv.Error as e:
            raise DataError(f"{path}:{line}: {_csv_problem(str(e))}") from None
        if fields and not (len(fields) == 1 and not fields[0].strip()):  # blank lines are skipped
            if header is None:
                header = _check_header(path, line, fields)
            else:
                records.append((line, _fields(path, line, header, fields, delimiter)))
        line = reader.line_num + 1


def _csv_problem(message: str) -> str:
    """csv's complaint as a cause and a fix."""
    if "expected after" in message:
        return "a quoted field goes on after its closing quote; double the quotes inside a quoted field (\"\")"
    if "end of data" in message:
        return "a quoted field is never closed; close its quote (a quote inside a field is written \"\")"
    return f"not readable as CSV ({message[:80]}); fix the quoting on this line"


def _check_header(path: Path, line: int, header: list) -> list:
    """The header's names, each once (a repeated name would hide one column's values)."""
    seen = {}
    for i, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(f"{path}:{line}: column {_short(name)} appears twice in the header (columns {seen[name]} and "
                            f"{i}); rename or delete one")
        seen[name] = i
    return header


def _fields(path: Path, line: int, header: list, fields: list, delimiter: str) -> dict:
    """{column: value} of a row as wide as the header; a wider or narrower row is refused (no field dropped)."""
    if len(fields) != len(header):
        sep = "a tab" if delimiter == "\t" else f"'{delimiter}'"
        raise DataError(f"{path}:{line}: {len(fields)} fields, the header has {len(header)}; quote a field that holds "
                        f"{sep} (\"...\") or fix the row")
    return dict(zip(header, fields))


def _read_jsonl(path: Path, text: str) -> tuple[list, list]:
    """One JSON object per non-blank line; columns are the keys of every object, in first-seen order."""
    records, columns = [], {}
    for line, chunk in enumerate(text.split("\n"), start=1):
        if chunk.strip():
            fields = _json_object(path, line, chunk)
            records.append((line, fields))
            columns.update(dict.fromkeys(fields))
    return records, list(columns)


def _json_object(path: Path, line: int, chunk: str) -> dict:
    """A line's object, each value a string or None: numbers keep the file's spelling, true/false as JSON writes
    them; an object or list value, NaN/Infinity, a repeated key or an unpaired surrogate is refused."""
    try:
        record = json.loads(chunk, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                            parse_float=JsonNumber, parse_int=JsonNumber)
    except _JsonRefusal as e:
        raise DataError(f"{path}:{line}: {e}") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}:{line}: not JSON ({getattr(e, 'msg', 'nested too deeply')}); each line must be one "
                        'object like {"text": ..., "label": ...}') from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{line}: a JSON {_json_type(record)}, not an object; write one object per line")
    return {key: _json_value(path, line, key, value) for key, value in record.items()}


class JsonNumber(str):
    """A JSON number as the file spells it (1e-7 stays "1e-7"; float() reads it for regression)."""


class _JsonRefusal(ValueError):
    """A parsed JSON line the reader will not reinterpret."""


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise _JsonRefusal(f"key {_short(dup)} appears twice in one object; keep one")
    return dict(pairs)


def _no_constant(name: str):
    raise _JsonRefusal(f"{name} is not a JSON value; write a finite number or a string")


def _json_value(path: Path, line: int, key: str, value) -> str | None:
    """A value as text; None stays None (an empty cell). Objects and lists are refused, whichever column."""
    if isinstance(value, (dict, list)):
        raise DataError(f"{path}:{line}: {_short(key)} is a JSON {_json_type(value)}; write it as a string or a number")
    if isinstance(value, JsonNumber):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and _has_surrogate(value):
        raise DataError(f"{path}:{line}: {_short(key)} holds an unpaired surrogate escape (\\ud800-\\udfff); fix the escape")
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


# ------------------------------------------------------------------------------------------- labels, targets

def _class_names(raw_labels, path) -> tuple:
    """Sorted distinct labels (numerically when all are finite numbers). Refused: a single class; more distinct
    numbers than MAX_NUMERIC_CLASSES or fewer than two rows per class (a regression target or the wrong column)."""
    counts = Counter(raw_labels)
    names = sorted(counts)
    if len(names) < 2:
        raise DataError(f"{path}: only one class ({_short(names[0])}) in the label column; classification needs at least "
                        "two (or pass --kind regression for numeric targets)")
    numeric = all(_number(name) is not None for name in names)
    if numeric:
        names = sorted(names, key=float)
    if numeric and len(names) > MAX_NUMERIC_CLASSES:
        raise DataError(f"{path}: {len(names)} distinct numeric labels ({_some(names)}); numeric targets are "
                        f"regression: pass --kind regression (or bin them into at most {MAX_NUMERIC_CLASSES} classes)")
    if len(names) > 2 and 2 * len(names) > len(raw_labels):
        raise DataError(f"{path}: {len(names)} distinct labels in {len(raw_labels)} rows ({_some(names)}), fewer than "
                        "two rows per class; check --label-column (numeric targets: --kind regression)")
    return tuple(names)


def _some(names, n: int = 5) -> str:
    """The first few names, quoted, with how many more."""
    shown = ", ".join(_short(x) for x in names[:n])
    return shown + (f", ... {len(names) - n} more" if len(names) > n else "")


def _column_names(columns: list, n: int = 12) -> str:
    """Header names as written when plain, else quoted (blank, padded, control characters), the first `n`."""
    plain = [c if c and c == c.strip() and c.isprintable() and len(c) <= 40 else _short(c) for c in columns[:n]]
    return ", ".join(plain) + (f", ... {len(columns) - n} more" if len(columns) > n else "")


def _short(value, width: int = 40) -> str:
    """repr(value), cut to `width` characters (a label may be a 5,000-digit number or a paragraph)."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 4] + "...'"


def _number(text: str) -> float | None:
    """The finite value of a label that reads as a number, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _spelling(label: str):
    """What two spellings of one class share: the number, else the text case-folded in NFKC."""
    value = _number(label)
    return ("number", value) if value is not None else ("text", unicodedata.normalize("NFKC", label).casefold())


def check_label_spellings(sources: list):
    """Refuse one class written two ways across a task's files: `Positive`/`positive`, `1`/`1.0`/`01`, `café`
    composed/decomposed. (HF datasets would make two classes of them; every sample of the class would be split, so
    the file is refused, not guessed at.) `sources`: [(path, [(line, label)])]."""
    first = {}
    for path, located in sources:
        for line, label in located:
            key = _spelling(label)
            seen = first.setdefault(key, (label, path, line))
            if seen[0] != label:
                classes = sorted({lab for _, rows in sources for _, lab in rows})
                a, b = (ascii(x) if _looks_alike(seen[0], label) else _short(x) for x in (seen[0], label))
                raise DataError(f"{seen[1]}:{seen[2]}: label {a} and {b} ({path}:{line}) are one class written two "
                                f"ways; write each class one way (classes found: {_some(classes, 8)})")


def _looks_alike(a: str, b: str) -> bool:
    """Two labels that print the same (Unicode composed vs decomposed): shown escaped."""
    return unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


def _class_targets(raw_labels, labels: tuple, path) -> np.ndarray:
    """Label indices; a label outside `labels` (e.g. only in a test file) is an error."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(raw_labels) - set(index))
    if unknown:
        raise DataError(f"{path}: labels [{_some(unknown)}] do not occur in the training data (classes: [{_some(labels, 8)}]); "
                        "fix the labels or add training examples for them")
    return frozen(np.array([index[v] for v in raw_labels], dtype=np.int64))


def regression_targets(raw_labels, path, lines=None) -> np.ndarray:
    """float32 values; the first non-numeric, non-finite or beyond-float32 value is an error naming its row."""
    values = []
    for i, v in enumerate(raw_labels):
        where = f"data row {i + 1}" + (f", line {lines[i]}" if lines else "")
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{path}: regression target {_short(v)} ({where}) is not a number; "
                            "fix the value or pass --kind classification") from None
        if not abs(value) <= FLOAT32_MAX:
            raise DataError(f"{path}: regression target {_short(v)} ({where}) is NaN, infinite or beyond float32 "
                            f"(|x| > {FLOAT32_MAX:.3g}); remove those rows or rescale the targets")
        values.append(value)
    return frozen(np.array(values, dtype=np.float32))


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
    """A task from one file (seeded split) or from train + validation/test files (a missing one is cut from train).
    Classification labels must be spelled one way across the files (check_label_spellings)."""
    if kind not in KINDS:
        raise DataError(f"task kind {kind!r}: use classification or regression")
    files = {"train": Path(path), "validation": validation, "test": test}
    parts = {s: _read_lines(Path(f), text_column, label_column) for s, f in files.items() if f is not None}
    labels = ()
    if kind == CLASSIFICATION:
        check_label_spellings([(Path(files[s]), [(line, lab) for line, _, lab in rows]) for s, rows in parts.items()])
        labels = _class_names([lab for _, _, lab in parts["train"]], path)
    splits = {s: _split_from_rows(rows, kind, labels, files[s]) for s, rows in parts.items()}
    try:
        splits = _fill_missing_splits(splits, fractions, seed)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    return Task(name or Path(path).stem, kind, labels, splits["train"], splits["validation"], splits["test"])


def _split_from_rows(rows, kind, labels, path) -> Split:
    """(line, text, label) rows -> Split with targets for the task kind."""
    texts = tuple(text for _, text, _ in rows)
    raw = [label for _, _, label in rows]
    if kind == CLASSIFICATION:
        return Split(texts, _class_targets(raw, labels, path))
    return Split(texts, regression_targets(raw, path, [line for line, _, _ in rows]))


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
