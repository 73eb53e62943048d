"""Atomic file and folder writes: output appears whole or not at all."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edge_lorax.formats.errors import OutputExistsError


def _publish_mode(path: Path, full: int):
    """mkdtemp/mkstemp create 0700/0600; give the result the mode a plain open() or mkdir() would (umask applied)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, full & ~umask)


def refuse_existing(path, overwrite: bool):
    """The one "already exists" refusal; callers that work long check it before starting, not only at write time."""
    if Path(path).exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass --overwrite or choose another output")


@contextmanager
def atomic_dir(path, overwrite: bool = False):
    """Yield a temp folder beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        _publish_mode(tmp, 0o777)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path, overwrite: bool = True):
    """Yield a temp file path beside `path`; renamed into place on success, removed on error."""
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish_mode(Path(tmp), 0o666)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
