"""Measuring primitives for the bench: block timing, percentiles, process memory from /proc, and `stamp()`, the
one record of machine, commit, versions and command that every benchmark script and report carries.

Latency is wall time per run (perf_counter_ns) after warm-up; memory is read from /proc/self/status (VmHWM peak,
RssAnon private, RssFile file-backed and shareable — mmapped weights land there). numpy and the standard library
only. Does not spawn processes or decide what to run (bench/run.py does).
"""

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from edge_lorax.formats.atomic import atomic_file

REPO = Path(__file__).resolve().parents[2]  # the checkout; an installed wheel has no .git here: commit "unknown"
VERSIONS = ("numpy", "onnxruntime", "tokenizers", "onnx", "torch", "transformers", "edge-lorax")


@dataclass(frozen=True)
class Stats:
    """Latency summary in milliseconds over `n` runs."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(seconds) -> Stats:
    """Percentiles of run times given in seconds, reported in ms (p99 of < 100 runs is close to the max)."""
    ms = np.asarray(seconds, np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return Stats(int(ms.size), float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()))


def time_runs(fn, n: int, clock=time.perf_counter_ns) -> list:
    """n consecutive calls of fn, each timed by `clock` (nanoseconds) and returned in seconds."""
    out = []
    for _ in range(n):
        t0 = clock()
        fn()
        out.append((clock() - t0) * 1e-9)
    return out


def cpu_runs(fn, n: int) -> list:
    """n consecutive calls, each timed in this thread's CPU time (seconds): immune to preemption by other
    processes, so it ranks per-run costs on a busy machine; only meaningful for 1-thread sessions."""
    return time_runs(fn, n, time.thread_time_ns)


def wall_and_cpu_runs(fn, n: int) -> tuple:
    """n consecutive calls, each timed twice (seconds): wall (perf_counter_ns) and this thread's CPU time
    (thread_time_ns, ~1 µs steps here). A 1-thread ORT session runs on the calling thread, so the CPU time is the
    run's own, blind to other threads of the process (idle sessions, BLAS pools) and to preemption."""
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        fn()
        c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
        wall.append((t1 - t0) * 1e-9)
        cpu.append((c1 - c0) * 1e-9)
    return wall, cpu


def balanced_orders(n: int) -> list:
    """Orders of n items (a Williams design): over all orders each item comes first once and follows every other
    item equally often, so what ran just before (warm caches, a spinning pool) hits no item more than another.
    n orders for even n, 2n for odd n."""
    base, lo, hi = [0], 1, n - 1
    while len(base) < n:
        base.append(lo)
        lo += 1
        if len(base) < n:
            base.append(hi)
            hi -= 1
    rows = [[(b + i) % n for b in base] for i in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def calibrate(fn, warmup: int, budget_s: float, min_runs: int, max_runs: int) -> int:
    """Warm up, then the number of runs that fits the time budget (clamped); the sharp edge: never 0."""
    times = time_runs(fn, max(warmup, 1))
    per = float(np.median(times[-max(1, warmup // 2):]))
    return int(min(max(budget_s / max(per, 1e-9), min_runs), max_runs))


def time_blocks(fn, blocks: int, per_block: int) -> list:
    """`blocks` blocks of `per_block` consecutive runs; returns one list of run times per block."""
    return [time_runs(fn, per_block) for _ in range(blocks)]


def proc_status() -> dict:
    """VmHWM, VmRSS, RssAnon, RssFile, RssShmem of this process in MiB ({} off Linux)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) / 1024.0
    except OSError:
        pass
    return out


_CLI_WRAP = ("import atexit, os, runpy, sys\n"
             "def _hwm():\n"
             "    line = next(x for x in open('/proc/self/status') if x.startswith('VmHWM'))\n"
             "    open(os.environ['EDGE_BENCH_RSS'], 'w').write(line.split()[1])\n"
             "atexit.register(_hwm)\n"
             "sys.argv = ['edge-lorax', *sys.argv[1:]]\n"
             "runpy.run_module('edge_lorax', run_name='__main__')\n")


def run_cli(args: list, rss_file: Path, tail: int = 3) -> dict:
    """`edge-lorax ARGS` as its own single-threaded-BLAS process (Linux): {"seconds": wall s, "peak_rss_mib": its
    VmHWM at exit in MiB, "exit": code, "report": its stdout as JSON or None, "stderr_tail": the last `tail` lines}.
    `rss_file` is where the child writes its VmHWM: one per calling process, so two benchmarks may run side by side."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "EDGE_BENCH_RSS": str(rss_file)}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CLI_WRAP, *map(str, args)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    try:
        data = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
    except ValueError:
        data = None
    return {"seconds": round(wall, 2), "peak_rss_mib": round(int(Path(rss_file).read_text()) / 1024, 1),
            "exit": done.returncode, "report": data, "stderr_tail": done.stderr.strip().splitlines()[-tail:]}


def trim_heap():
    """glibc malloc_trim(0): hand freed heap pages back to the OS so RSS deltas measure new allocations (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; falls back to the logical count."""
    try:
        pairs, phys = set(), "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "physical id":
                phys = value
            elif key == "core id":
                pairs.add((phys, value))
        return len(pairs) or (os.cpu_count() or 1)
    except OSError:
        return os.cpu_count() or 1


def ram_gib() -> float:
    """Total RAM in GiB from /proc/meminfo (0.0 when unreadable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def git_commit(repo: Path = REPO, paths=()) -> str:
    """HEAD commit, with `+dirty` when tracked files differ from it (only those under `paths`, when given: the
    code a report depends on); "unknown" outside a git checkout. The one place the package asks git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", *paths],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions(packages=VERSIONS) -> dict:
    """Versions of Python and the packages a report depends on ('not installed' when absent)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict:
    """The stamp every report carries: CPU, cores, RAM, OS, load average now."""
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "_physical_cores": _physical_cores(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "ram_gib": ram_gib(), "os": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python_executable": sys.executable}


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


def stamp(command: str, packages=VERSIONS, dirty_paths=()) -> dict:
    """What every report records before it measures: the command, the commit (+dirty; `dirty_paths` narrows the
    check to the code the report depends on), machine (CPU model, cores, RAM, OS, load), versions, start time."""
    return {"command": command, "git_commit": git_commit(REPO, dirty_paths), "dirty_scope": list(dirty_paths) or "all",
            "machine": machine(), "versions": versions(packages), "started": _now()}


def finish(st: dict) -> dict:
    """The stamp with the end time and the load average at the end (a busy end flags a noisy run too)."""
    return {**st, "finished": _now(), "load_average_end": [round(x, 2) for x in os.getloadavg()]}


def stamp_md(st: dict) -> list:
    """The stamp as Markdown bullet lines, the same in every report."""
    m = st["machine"]
    return [f"- command: `{st['command']}`", f"- git commit: `{st['git_commit']}`",
            f"- machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['_physical_cores']} physical), "
            f"{m['ram_gib']} GiB RAM, {m['os']}",
            f"- load average: start {m['load_average']}, end {st.get('load_average_end', 'not recorded')}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in st["versions"].items()),
            f"- started {st['started']}, finished {st.get('finished', 'not recorded')}"]


def busy(st: dict, limit: float = 0.5) -> bool:
    """1-min load ≥ `limit` at start or end: other processes competed for the cores."""
    return max(st["machine"]["load_average"][0], st.get("load_average_end", [0])[0]) >= limit


def portable(text: str) -> str:
    """Committed reports carry no local paths: the repo root becomes relative, the venv `$VENV`."""
    return text.replace(sys.prefix, "$VENV").replace(str(REPO) + "/", "").replace(str(REPO), ".")


def write_report_files(out_dir: Path, data: dict, markdown_text: str, draw) -> Path:
    """report.json, report.md and report.png (draw(path) writes the PNG) into out_dir, each written atomically, the
    text with local paths made portable; returns out_dir. Shared by the encoder and the decoder bench reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "report.json") as tmp:
        tmp.write_text(portable(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n"))
    with atomic_file(out_dir / "report.md") as tmp:
        tmp.write_text(portable(markdown_text))
    with atomic_file(out_dir / "report.png") as tmp:
        draw(tmp)  # temp files have no suffix: draw with an explicit format
    return out_dir
