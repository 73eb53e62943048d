"""`edge-lorax bench`: latency, switch cost and memory of the EigenLoRAx bundle against its references, one fresh
process per measurement, written as a stamped report (JSON + Markdown + PNG).

Order: prepare every graph (bench/prepare.py, needs torch), then run the workers one at a time, never in parallel
(they would share cores): the latency sweep, the paired overhead ratios (a cell re-measured while its A/A control
is off: report.control_holds), switch costs, resident-user memory and the torch reference. Nothing is made up: a
failed or unavailable measurement is a row saying so. Does not judge the targets (report.py does).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_lorax.bench import measure, workers
from edge_lorax.bench.prepare import AA_COPY, ANCHOR, EIGEN, FUSED, INT8, MERGED, OPTIMUM, OPTIMUM_O2, PLAIN
from edge_lorax.runtime.bundle import usable_cores

SWEEP_MODELS = (PLAIN, EIGEN, ANCHOR, MERGED, PLAIN + INT8, EIGEN + INT8, ANCHOR + INT8)  # always prepared
OPTIONAL_MODELS = (FUSED, OPTIMUM, OPTIMUM_O2)  # where prepared: a fused bundle, an optimum-cli (bench/prepare.py)


def sweep_models(prep) -> tuple:
    """The models a run measures: SWEEP_MODELS plus the optional ones this preparation has."""
    return SWEEP_MODELS + tuple(m for m in OPTIONAL_MODELS if m in prep.models)


@dataclass(frozen=True)
class Plan:
    """What a bench run measures and how long it spends; `threads` 0 means all usable cores."""

    batches: tuple = (1, 8)
    seqs: tuple = (16, 64, 128)
    threads: tuple = (1, 0)
    budget_s: float = 2.0  # per latency configuration, after warm-up
    min_runs: int = 30
    max_runs: int = 1000
    warmup: int = 10
    blocks: int = 5
    paired_cells: tuple = ((1, 16), (1, 64), (8, 64))  # (batch, seq) measured alternating models in blocks
    paired_rounds: int = 40  # five full balanced orders of the 8 paired models; short rounds (see report notes)
    paired_retries: int = 2  # re-measurements of a paired cell whose A/A control is off (report.AA_LIMIT)
    block_s: float = 0.1  # per paired block, sized on the slowest model; after 2 untimed switch runs
    user_counts: tuple = (1, 10, 100, 1000)
    switch_reps: int = 200
    session_reps: int = 5
    n_users: int = 10
    torch_cells: tuple = ((1, 64), (8, 64))
    timeout_s: int = 900


QUICK = Plan(batches=(1,), seqs=(16,), threads=(1,), budget_s=0.05, min_runs=5, max_runs=50, warmup=2, blocks=1,
             paired_cells=((1, 16),), paired_rounds=3, block_s=0.02, user_counts=(1, 10, 100), switch_reps=20,
             session_reps=1, n_users=3, torch_cells=((1, 16),), timeout_s=120)


def _threads_of(n: int) -> int:
    """0 -> all usable cores."""
    return n or usable_cores()


def spawn(spec: dict, timeout_s: int) -> dict:
    """Run one worker in a fresh interpreter; its result, or {"error": ...} (never a made-up number)."""
    cmd = [sys.executable, "-m", "edge_lorax.bench.workers", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(workers.RESULT_PREFIX):
            return json.loads(line[len(workers.RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exit {proc.returncode}: {' | '.join(tail)[:400]}"}


def _log(msg: str, log):
    if log:
        log(msg)


def sweep(prep, plan: Plan, log=None) -> list:
    """Latency of every model × batch × seq × threads, each configuration in its own process."""
    rows = []
    for threads in plan.threads:
        for batch in plan.batches:
            for seq in plan.seqs:
                for label in sweep_models(prep):
                    spec = {"kind": "latency", "model": prep.models[label], "feeds": prep.feeds.get(label),
                            "threads": _threads_of(threads), "batch": batch, "seq": seq, "vocab": prep.vocab,
                            "warmup": plan.warmup, "budget_s": plan.budget_s, "min_runs": plan.min_runs,
                            "max_runs": plan.max_runs, "blocks": plan.blocks}
                    res = spawn(spec, plan.timeout_s)
                    rows.append({"model": label, "threads": _threads_of(threads), "batch": batch, "seq": seq, **res})
                    p50 = res.get("stats", {}).get("p50")
                    _log(f"latency {label}, {_threads_of(threads)} thread(s), batch {batch} x {seq} tokens: "
                         + (f"p50 {p50:.2f} ms" if p50 is not None else str(res.get("error"))), log)
    return rows


def paired_cell(spec: dict, key: str, plan: Plan, log=None) -> dict:
    """One paired cell, re-measured (fresh process each) while its A/A control is off by more than
    report.AA_LIMIT, at most 1 + plan.paired_retries times; the first valid attempt, else the last one, with every
    attempt's control kept under "attempts" (report.py marks a cell whose control never held INVALID)."""
    from edge_lorax.bench.report import control, control_holds

    attempts = []
    for _ in range(1 + plan.paired_retries):
        res = spawn(spec, plan.timeout_s)
        if "error" in res:
            return {**res, "attempts": attempts}
        attempts.append({"control": control(res, key), "control_wall": control(res), "per_block": res.get("per_block")})
        _log(f"paired t={spec['threads']} b={spec['batch']} s={spec['seq']}: A/A control ×{attempts[-1]['control']:.3f}", log)
        if control_holds(res, key):
            break
    return {**res, "metric": key, "attempts": attempts}


def _paired_ratios(prep, plan: Plan, log=None, busy_machine: bool = False) -> list:
    """Per cell and thread count: all models alternated in blocks in one process, plus an A/A control (plain's
    file opened twice: the same graph, another session); judged on wall time, or on the thread's CPU time for
    1-thread cells when the machine was busy at the start."""
    from edge_lorax.bench.report import metric_for

    rows = []
    models = [{"label": lab, "model": prep.models[lab], "feeds": prep.feeds.get(lab)} for lab in sweep_models(prep)]
    models.append({"label": AA_COPY, "model": prep.models[PLAIN], "feeds": None})
    for threads in plan.threads:
        for batch, seq in plan.paired_cells:
            spec = {"kind": "paired", "models": models, "threads": _threads_of(threads), "batch": batch, "seq": seq,
                    "vocab": prep.vocab, "warmup": plan.warmup, "rounds": plan.paired_rounds, "block_s": plan.block_s}
            key = metric_for(_threads_of(threads), busy_machine)
            rows.append({"threads": _threads_of(threads), "batch": batch, "seq": seq, **paired_cell(spec, key, plan, log)})
    return rows


def _switch_costs(prep, bundle_dir, plan: Plan) -> dict:
    """User-switch costs on the bundle (1 thread, batch 1), one process."""
    spec = {"kind": "switch", "bundle": str(bundle_dir), "threads": 1, "batch": 1, "seq": 64 if plan.seqs != (16,) else 16,
            "vocab": prep.vocab, "user_files": prep.user_files, "eigen_adapters": prep.eigen_adapters,
            "lora_adapters": prep.lora_adapters, "merged_model": prep.merged_model, "reps": plan.switch_reps,
            "session_reps": plan.session_reps}
    return spawn(spec, plan.timeout_s)


def _resident_memory(prep, plan: Plan) -> list:
    """RSS growth for N resident users: EigenLoRAx coefficients vs LoRA A/B, each N in its own process."""
    rows = []
    for kind, label in (("eigenlorax coefficients", EIGEN), ("lora A/B", ANCHOR)):
        for n in plan.user_counts:
            spec = {"kind": "memory", "model": prep.models[label], "feeds": prep.feeds[label], "users": n,
                    "vocab": prep.vocab}
            rows.append({"users_kind": kind, "users": n, **spawn(spec, plan.timeout_s)})
    return rows


def torch_reference(prep, plan: Plan) -> list:
    """Eager torch on CPU (1 thread and all cores) and CUDA, fresh process each; without a GPU the CUDA rows say
    'not available' (never a figure)."""
    import torch  # already loaded by the preparation; a CUDA row without a device is a row, not a process

    rows = []
    for device in ("cpu", "cuda"):
        for threads in (plan.threads if device == "cpu" else (1,)):
            for batch, seq in plan.torch_cells:
                if device == "cuda" and not torch.cuda.is_available():
                    rows.append({"device": device, "threads": _threads_of(threads), "batch": batch, "seq": seq,
                                 "available": False, "reason": "not available: no CUDA device on this machine"})
                    continue
                spec = {"kind": "torch", "device": device, "threads": _threads_of(threads), "batch": batch, "seq": seq,
                        "vocab": prep.vocab, "model_dir": prep.model_dir, "subspace": prep.subspace,
                        "coeffs": prep.coeffs, "num_labels": prep.num_labels, "warmup": plan.warmup,
                        "budget_s": plan.budget_s, "min_runs": plan.min_runs, "max_runs": plan.max_runs}
                res = spawn(spec, plan.timeout_s)
                rows.append({"device": device, "threads": _threads_of(threads), "batch": batch, "seq": seq, **res})
    return rows


def run_bench(bundle_dir, out_dir, quick: bool = False, model_dir=None, subspace_dir=None, coeffs=None,
              command: str = "", log=None, plan: Plan | None = None, optimum_cli: str | None = None) -> Path:
    """Prepare, measure, write the report into out_dir (report.json, report.md, report.png); returns out_dir.
    optimum_cli: the CLI that exports optimum's plain rows (bench/prepare.py find_optimum_cli; none: rows absent)."""
    from edge_lorax.bench.prepare import prepare
    from edge_lorax.bench.report import write_report

    plan = plan or (QUICK if quick else Plan())
    data = {"stamp": measure.stamp(command or " ".join(sys.argv)), "plan": asdict(plan), "quick": quick,
            "bundle": str(bundle_dir)}
    with tempfile.TemporaryDirectory(prefix="edge-lorax-bench-") as work:
        t0 = time.perf_counter()
        prep = prepare(bundle_dir, work, model_dir, subspace_dir, coeffs, plan.n_users, optimum_cli)
        data["prepared"], data["prepare_s"] = prep.to_dict(), time.perf_counter() - t0
        _log(f"prepared in {data['prepare_s']:.1f} s; parity {prep.parity}", log)
        data["latency"] = sweep(prep, plan, log)
        data["paired"] = _paired_ratios(prep, plan, log, measure.busy(data["stamp"]))
        data["switch"] = _switch_costs(prep, bundle_dir, plan)
        data["memory"] = _resident_memory(prep, plan)
        data["torch"] = torch_reference(prep, plan)
    data["stamp"] = measure.finish(data["stamp"])
    return write_report(data, Path(out_dir))

