"""Run one function over many independent items, in this process or as Ray tasks: the one place edge-lorax talks
to Ray (https://docs.ray.io/en/latest/ray-core/tasks.html).

`map_items(fn, items, executor)` returns one Outcome per item, in the items' order, each with the task's own wall
seconds, the process and host that ran it and that process's peak RSS (VmHWM: Ray reuses worker processes, so it is
the worker's peak so far). `local` (the default) runs the items here, one after another. `ray` submits one task per
item (one CPU each) to the cluster at `address`, or to a local one started here with `workers` CPUs (Ray's own
`ray.init(num_cpus=...)`, nothing to set up beyond `pip install edge-lorax[fleet]`), kept for the process's later
maps and shut down at exit.
Ray moves `fn` and the items between processes with its own serialiser (cloudpickle); no input file is unpickled.
Tasks read their input files by path: on a cluster of several machines the files must sit at the same path on
every node (a shared filesystem). Does not retry failed items, balance memory or pick the number of workers.
"""

import atexit
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_lorax.formats.errors import InputError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Executor:
    """Where map_items runs: kind "local" or "ray"; address: an existing Ray cluster (e.g. "auto", "host:6379"; None
    starts a local one); workers: CPUs of that local cluster (None: all of this machine's)."""

    kind: str = "local"
    address: str | None = None
    workers: int | None = None

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise InputError(f"--executor must be one of {EXECUTORS}, got {self.kind!r}")
        if self.kind == "local" and (self.address or self.workers):
            raise InputError("--address and --workers apply to --executor ray only")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers {self.workers}: at least 1 is needed")


@dataclass(frozen=True)
class Outcome:
    """One item's result (`value`) or its failure (`error`: the exception's one line), with where and how long."""

    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    pid: int = 0
    host: str = ""
    peak_rss_mib: float = 0.0
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def stats(self) -> dict:
        """The timing fields as a JSON-ready dict (value and exception left out)."""
        return {"seconds": round(self.seconds, 4), "pid": self.pid, "host": self.host,
                "peak_rss_mib": round(self.peak_rss_mib, 1), **({"error": self.error} if self.error else {})}


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM, /proc/self/status) in MiB; 0 where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            line = next((x for x in f if x.startswith("VmHWM:")), "VmHWM: 0 kB")
    except OSError:
        return 0.0
    return int(line.split()[1]) / 1024


def run_item(fn: Callable, item) -> Outcome:
    """fn(item) timed where it runs; an exception becomes the Outcome's error (never raised here)."""
    t0 = time.perf_counter()
    try:
        value, error, exc = fn(item), None, None
    except Exception as e:  # any task failure is data for the caller: it decides to raise or to list it
        value, error, exc = None, f"{type(e).__name__}: {e}", e
    return Outcome(value, error, time.perf_counter() - t0, os.getpid(), socket.gethostname(), peak_rss_mib(), exc)


def map_items(fn: Callable, items: list, executor: Executor | None = None, progress=None,
              raise_errors: bool = True) -> list:
    """[Outcome] for fn over items, in order. raise_errors: the first failed item's exception is raised (an
    InputError as itself, so the CLI prints its one line); else failures come back as Outcomes with `error` set.
    progress: called as progress(finished, total) after each item."""
    executor = executor or Executor()
    runner = _map_ray if executor.kind == "ray" else _map_local
    items = list(items)
    report = (lambda done: progress(done, len(items))) if progress else (lambda done: None)
    outcomes = runner(fn, items, executor, report)
    failed = next((o for o in outcomes if o.error), None)
    if raise_errors and failed is not None:
        raise failed.exception if failed.exception is not None else RuntimeError(failed.error)
    return outcomes


def _map_local(fn, items, executor, progress) -> list:
    out = []
    for item in items:
        out.append(run_item(fn, item))
        progress(len(out))
    return out


def _map_ray(fn, items, executor, progress) -> list:
    """One Ray task per item (num_cpus=1), fn put in the object store once; results gathered as they finish. The
    first map of a process connects (or starts the local cluster) and later maps reuse it; ray.shutdown at exit."""
    ray = _import_ray()
    if not ray.is_initialized():
        _init_ray(ray, executor)
    task, fn_ref = ray.remote(num_cpus=1, max_retries=0)(run_item), ray.put(fn)
    refs = [task.remote(fn_ref, item) for item in items]
    index, out, pending = {r: i for i, r in enumerate(refs)}, [None] * len(refs), list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        out[index[done[0]]] = _fetch(ray, done[0])
        progress(len(refs) - len(pending))
    return out


def _init_ray(ray, executor: Executor):
    """Connect (or start the local cluster), keeping the process's own SIGTERM/SIGHUP handlers: ray.init replaces
    them with its own (exit 1 and a stack dump), which would skip the CLI's cleanup and its 128 + signal status."""
    import signal

    _check_reachable(executor.address)
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        ray.init(address=executor.address, num_cpus=None if executor.address else executor.workers,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as e:  # "auto" with no cluster running
        said = str(e).strip().splitlines()[0].split(". ")[0].rstrip(".")
        raise InputError(f"--address {executor.address}: {said}; {NO_CLUSTER_FIX}") from None
    atexit.register(ray.shutdown)
    for sig, handler in kept.items():
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(sig, handler)


NO_CLUSTER_FIX = "start one (`ray start --head`) or leave --address out for a local cluster"


def _check_reachable(address: str | None, timeout_s: float = 5.0):
    """A HOST:PORT address must accept a TCP connection within timeout_s: ray.init retries an unreachable one for
    minutes. Ray's other forms (None, "auto", "local", "ray://...") go to ray.init as they are."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise InputError(f"--address {address}: no Ray cluster answers there ({type(e).__name__}: {e}); "
                         f"{NO_CLUSTER_FIX}") from None


def _fetch(ray, ref) -> Outcome:
    """A task's Outcome; a task Ray itself lost (worker died, e.g. out of memory) becomes a failed Outcome."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        line = str(e).strip().splitlines()[0][:300]
        return Outcome(error=f"{type(e).__name__}: {line}", exception=RuntimeError(f"Ray task failed: {line}"))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'edge-lorax[fleet]' (or `pip install ray`)") from None
    return ray
