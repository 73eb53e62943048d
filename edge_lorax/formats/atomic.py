"""Atomic file and folder writes: output appears whole or not at all, and nothing of ours is left beside it.

A write goes to a hidden temp sibling named `.<name>.partial-<pid>-<random>` and is renamed into place on success;
on any error, Ctrl-C or SIGTERM (the CLI turns it into an exception) the temp is removed. Only SIGKILL or a power cut
can leave one behind, and the next write into that folder sweeps it (`sweep_stale`): only names of exactly that
pattern, and only when their owning pid is gone or they are older than STALE_AGE_S. `check_output` is the check a
long command makes before its work (exists? writable?). Published files and folders get the mode a plain open() or
mkdir() would give (umask applied), whatever the writer used inside the temp. Does not know any file format.
"""

import os
import re
import secrets
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from edge_lorax.formats.errors import InputError, OutputExistsError

STALE_AGE_S = 24 * 3600  # a temp older than this is stale even if its pid is alive again (pid reuse)
_TEMP = re.compile(r"^\..+\.partial-(\d+)-[a-z0-9_]{8}$")  # mkstemp/mkdtemp add 8 chars of [a-z0-9_]


def _temp_prefix(path: Path) -> str:
    """The prefix of our temp sibling for `path`; the owning pid is in the name so a sweep can tell it is dead."""
    return f".{path.name}.partial-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_stale(entry: Path, now: float) -> bool:
    match = _TEMP.match(entry.name)
    if match is None or int(match.group(1)) == os.getpid():
        return False
    try:
        age = now - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AGE_S or not _pid_alive(int(match.group(1)))


def sweep_stale(folder) -> list:
    """Remove our temp siblings in `folder` left by a killed writer (pid gone, or older than STALE_AGE_S); returns
    their names. Anything not named exactly like ours is never touched."""
    folder, now, removed = Path(folder), time.time(), []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if _is_stale(entry, now):
            _remove(entry)
            removed.append(entry.name)
    return removed


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _publish_mode(path: Path):
    """mkdtemp/mkstemp create 0700/0600 and some writers (safetensors) 0600 too; give the temp and everything in it
    the mode a plain open() or mkdir() would (umask applied; executables keep their x bits)."""
    umask = _umask()
    items = [path] + (sorted(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
    for item in items:
        if item.is_symlink():
            continue
        full = 0o777 if item.is_dir() or item.stat().st_mode & 0o111 else 0o666
        os.chmod(item, full & ~umask)


def _refuse_existing(path, overwrite: bool):
    """The one "already exists" refusal; callers that work long check it before starting, not only at write time."""
    if Path(path).exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass --overwrite or choose another output")


def _nearest_existing(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def check_output(path, overwrite: bool = False) -> Path:
    """Before any long work: refuse an existing output (unless overwrite) and an output that cannot be written (a
    parent that is a file, a read-only or full folder, no permission); sweep our stale temps beside it."""
    path = Path(path)
    _refuse_existing(path, overwrite)
    where = path.parent if path.parent.is_dir() else _nearest_existing(path)
    if not where.is_dir():
        raise InputError(f"{path}: cannot be written, {where} is not a folder; choose another output")
    sweep_stale(where)
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{path}: cannot write in {where} ({e.strerror or e}); choose another output or fix its "
                         "permissions") from e
    return path


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap_in(tmp: Path, path: Path):
    """Rename `tmp` to `path`. An existing output is first renamed aside under our temp naming, then removed: an
    interruption at any point leaves the old output or the new one whole, at worst beside a temp the next write
    sweeps (deleting the old output in place could leave half of it)."""
    if not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    aside = path.parent / f"{_temp_prefix(path)}{secrets.token_hex(4)}"
    os.replace(path, aside)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(aside, path)
        raise
    _remove(aside)


def _begin(path, overwrite: bool) -> Path:
    """What every atomic write does first: refuse an existing output, make the parent, sweep our stale temps there."""
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    return path


def _publish(tmp: Path, path: Path, overwrite: bool):
    """The one publish rule, files and folders alike: `overwrite` swaps the new output in; otherwise an output that
    appeared while we worked (another process) is never replaced: OutputExistsError, and ours is discarded. A file is
    published with link() (atomic: it fails if the name exists); a folder after a last existence check."""
    _publish_mode(tmp)
    if overwrite:
        _swap_in(tmp, path)
        return
    try:
        if tmp.is_dir():
            _refuse_existing(path, False)
            os.rename(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except FileExistsError as e:
        raise OutputExistsError(f"{path}: appeared while this command ran (another process?); pass --overwrite or "
                                "choose another output") from e
    except OutputExistsError as e:
        raise OutputExistsError(f"{path}: appeared while this command ran (another process?); pass --overwrite or "
                                "choose another output") from e


@contextmanager
def atomic_dir(path, overwrite: bool = False):
    """Yield a temp folder beside `path`; on success it becomes `path` (by the publish rule), on error it is removed."""
    path = _begin(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    try:
        yield tmp
        _publish(tmp, path, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path, overwrite: bool = True):
    """Yield a temp file path beside `path`; on success it becomes `path` (by the publish rule), on error it is
    removed. overwrite defaults to True for files a command rewrites as its own (reports, manifests inside a temp
    folder); user-facing outputs pass the command's --overwrite."""
    path = _begin(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(Path(tmp), path, overwrite)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
