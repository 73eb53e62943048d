"""Interrupted writes (issue 11, kind 8): SIGTERM and SIGKILL during `export` and `build`, at several points.

SIGTERM is what `timeout` and service managers send: the command unwinds like Ctrl-C, so it leaves nothing of ours
beside the target at once (and no target). SIGKILL cannot be caught: its temp folder may stay, and the next command
of ours that writes there sweeps it. Either way, after the next command nothing of ours is left beside the target.
Real processes (`python -m edge_lorax`), a tiny model for `export`; `build` reads 20 hard-linked copies of the nine
committed MiniLM adapters (seconds of reading and SVD, no model) so the kills land inside its work.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_lorax.cli import cli
from edge_lorax.formats.atomic import STALE_AGE_S, sweep_stale

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "adapters" / f"{d}-{t}" for d in ("tweets", "movies", "amazon") for t in ("binary", "3class", "regression")]


@pytest.fixture(scope="module")
def many_sources(tmp_path_factory) -> list:
    """180 adapter folders: the nine committed sources 20 times over (hard links, no copy), ~5 s of `build`."""
    root, folders = tmp_path_factory.mktemp("sources"), []
    for i in range(20):
        for src in SOURCES:
            dst = root / f"{src.name}-{i}"
            dst.mkdir()
            for f in src.iterdir():
                os.link(f, dst / f.name)
            folders.append(dst)
    return folders


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers.tiny import tiny_setup

    return tiny_setup("bert", tmp_path_factory.mktemp("kill"), n_adapters=3)


def ours(folder: Path, name: str) -> list:
    """What of ours is beside `name` in `folder`: our temp siblings (any name), nothing else counts."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ".partial-" in p.name)


def start(args: list) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "edge_lorax", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_temp(proc: subprocess.Popen, folder: Path, name: str, timeout: float = 120) -> bool:
    """Poll until the command's temp folder for `name` appears (True) or it exits (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if any(p.startswith(f".{name}.partial-") for p in os.listdir(folder)):
            return True
        time.sleep(0.02)
    return False


def interrupt(args: list, folder: Path, name: str, sig: int, when: str, delay: float) -> int:
    """Run the command, send `sig` `delay` s after it starts (when="start") or after its temp folder appears
    (when="temp"); returns its exit status (0 if it finished first)."""
    proc = start(args)
    try:
        if when == "temp":
            wait_for_temp(proc, folder, name)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def check_after_signal(rc: int, sig: int, folder: Path, name: str):
    """SIGTERM: exit 128 + 15 (or killed by it before the CLI started), nothing of ours left now; no half output."""
    target = folder / name
    if rc == 0:  # it finished before the signal: a whole output
        assert target.is_dir() and any(target.iterdir())
    else:
        assert not target.exists(), sorted(os.listdir(folder))
    if sig == signal.SIGTERM:
        assert rc in (0, 128 + signal.SIGTERM, -signal.SIGTERM), rc
        assert ours(folder, name) == []


EXPORT_POINTS = [("start", 1.0), ("temp", 0.0), ("temp", 0.5)]
BUILD_POINTS = [("start", 0.3), ("start", 1.0), ("start", 2.0)]
SIGNALS = [signal.SIGTERM, signal.SIGKILL]


@pytest.mark.parametrize("sig", SIGNALS, ids=["TERM", "KILL"])
@pytest.mark.parametrize("when, delay", EXPORT_POINTS)
def test_export_interrupted(tiny, tmp_path, sig, when, delay):
    folder = tmp_path / "out"
    folder.mkdir()
    args = ["export", "--model", tiny.model, "--subspace", tiny.subspace, "--coeffs", tiny.user, "--task", "features",
            "-o", folder / "bundle"]
    rc = interrupt(args, folder, "bundle", sig, when, delay)
    check_after_signal(rc, sig, folder, "bundle")
    res = CliRunner().invoke(cli, [str(a) for a in args] + ["--overwrite"])  # the next command of ours, writing there
    assert res.exit_code == 0, res.output
    assert ours(folder, "bundle") == [] and sorted(os.listdir(folder)) == ["bundle"]


@pytest.mark.parametrize("sig", SIGNALS, ids=["TERM", "KILL"])
@pytest.mark.parametrize("when, delay", BUILD_POINTS)
def test_build_interrupted(tiny, many_sources, tmp_path, sig, when, delay):
    folder = tmp_path / "out"
    folder.mkdir()
    rc = interrupt(["build", *many_sources, "-o", folder / "subspace", "-k", "8"], folder, "subspace", sig, when, delay)
    check_after_signal(rc, sig, folder, "subspace")
    res = CliRunner().invoke(cli, ["build", *map(str, tiny.adapters), "-o", str(folder / "subspace"), "-k", "2",
                                   "--overwrite"])
    assert res.exit_code == 0, res.output
    assert ours(folder, "subspace") == [] and sorted(os.listdir(folder)) == ["subspace"]


def test_a_killed_exports_temp_is_swept_by_the_next_write(tiny, tmp_path):
    """The SIGKILL case made certain: kill once the temp folder is there, see it stay, see the next write sweep it."""
    folder = tmp_path / "out"
    folder.mkdir()
    args = ["export", "--model", tiny.model, "--subspace", tiny.subspace, "--task", "features", "-o", folder / "bundle"]
    proc = start(args)
    assert wait_for_temp(proc, folder, "bundle")
    proc.kill()
    proc.wait()
    left = ours(folder, "bundle")
    assert len(left) == 1 and not (folder / "bundle").exists()
    res = CliRunner().invoke(cli, ["project", str(tiny.subspace), str(tiny.adapters[1]), "-o", str(folder / "u.npz")])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(folder)) == ["u.npz"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_takes_only_ours_and_only_stale(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    names = {f".bundle.partial-{dead}-abcd_123": True,  # its writer is gone
             f".u.npz.partial-{dead}-zzzzzzzz": True,  # a file of ours, any target name
             f".bundle.partial-{me}-abcdefgh": False,  # this process is writing it
             ".bundle.partial-1-abcdefgh": False,  # pid 1 is alive (and it is young)
             ".bundle.partial-1-oldoldol": True,  # alive pid, but older than STALE_AGE_S (pid reuse)
             f".bundle.{dead}.abcdefgh": False,  # not our pattern
             ".bundle.backup": False, "bundle": False, f"bundle.partial-{dead}-abcdefgh": False}
    for name in names:
        (tmp_path / name).mkdir() if "u.npz" not in name else (tmp_path / name).write_text("x")
    old = time.time() - STALE_AGE_S - 60
    os.utime(tmp_path / ".bundle.partial-1-oldoldol", (old, old))
    removed = sweep_stale(tmp_path)
    assert sorted(removed) == sorted(n for n, stale in names.items() if stale)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, stale in names.items() if not stale)


def test_overwrite_swaps_whole_outputs_and_leaves_nothing(tmp_path):
    """--overwrite: the old output is renamed aside (our temp naming) before the new one moves in, then removed."""
    from edge_lorax.formats.atomic import atomic_dir

    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "old").write_text("old")
    (tmp_path / "file").write_text("old")
    for name in ("dir", "file"):
        with atomic_dir(tmp_path / name, overwrite=True) as tmp:
            (tmp / "new").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"]
    assert all(sorted(os.listdir(tmp_path / n)) == ["new"] for n in ("dir", "file"))


def test_sigterm_during_a_ray_build_exits_143_and_leaves_nothing(many_sources, tmp_path):
    """ray.init installs its own SIGTERM handler (exit 1, stack dump) and ray.wait re-raises the exit as status 1:
    the CLI keeps its own handler and status, the local cluster stops with the command."""
    pytest.importorskip("ray")
    folder = tmp_path / "out"
    folder.mkdir()
    proc = start(["build", *many_sources, "-o", folder / "subspace", "-k", "8", "--executor", "ray", "--workers", "1"])
    try:
        seen = b""
        while b"modules:" not in seen and proc.poll() is None:  # the bar opens when the first module is done
            seen += os.read(proc.stderr.fileno(), 4096)
        proc.send_signal(signal.SIGTERM)
        err = seen + proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode(errors="replace")[-2000:]
    assert b"Terminated (SIGTERM)" in err and b"logging.cc" not in err
    assert sorted(os.listdir(folder)) == []
