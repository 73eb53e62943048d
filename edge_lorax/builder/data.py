"""Tasks by spec: a CSV, TSV or JSONL file (read by edge_lorax.formats.tasks), or the built-in VADER family
(`vader:<domain>-<type>`).

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
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from edge_lorax.builder import tasks_pkg
from edge_lorax.builder.cache import cache_dir
from edge_lorax.formats.tasks import (  # noqa: F401  (the task types and file reading, re-exported for builder users)
    CLASSIFICATION,
    DEFAULT_FRACTIONS,
    KINDS,
    REGRESSION,
    SPLITS,
    DataError,
    Split,
    Task,
    frozen,
    read_rows,
    read_task,
    regression_targets,
    split_indices,
)

VADER_DOMAINS = {"tweets": "tweets", "movies": "movieReviewSnippets", "amazon": "amazonReviewSnippets",
                 "nyt": "nytEditorialSnippets"}
VADER_TYPES = ("binary", "3class", "regression")
VADER_NEUTRAL = 0.5  # 3class: valence < -0.5 negative, |valence| <= 0.5 neutral, > 0.5 positive (mean rating, -4..4)
VADER_SDIST = "vaderSentiment==3.3.2"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_TASKS = tuple(f"vader:{d}-{t}" for d in VADER_DOMAINS for t in VADER_TYPES)



# ------------------------------------------------------------------------------------------------------ VADER

def repo_data_dir() -> Path:
    """`data/vader` beside the package (a source checkout), or $EDGE_LORAX_DATA/vader when set."""
    if os.environ.get("EDGE_LORAX_DATA"):
        return Path(os.environ["EDGE_LORAX_DATA"]) / "vader"
    return Path(__file__).resolve().parents[2] / "data" / "vader"


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
    rows = read_rows(path, "text", "valence")
    seen, texts, values = set(), [], []
    for text, value in rows:
        if text not in seen:
            seen.add(text)
            texts.append(text)
            values.append(value)
    return tuple(texts), regression_targets(values, path)


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
