"""Build time and peak memory of `edge-lorax build` against the number of source adapters N.

Synthetic Llama-7B-shaped LoRA adapters (32 layers, q_proj and v_proj, 4096 x 4096, rank 16, float16 storage, scaling
1: lora_alpha = r) are written once as real PEFT folders by edge_lorax.formats.peft.write_adapter for the largest N;
smaller N use the first N folders.
Each build runs the `edge-lorax build` console script in a fresh process; wall time is measured around it and peak
RSS is that child's ru_maxrss (from os.wait4, i.e. its VmHWM). Targets: time roughly linear in N, peak RSS flat
within +-10 % across N. The report carries edge_lorax.bench.measure.stamp() (+dirty judged on the build's code).

    .venv/bin/python benchmarks/build_scale.py                       # N = 50 100 200, report in benchmarks/reports/
    .venv/bin/python benchmarks/build_scale.py --n 8 16 --layers 2   # a quick smoke run (no report written)

Needs ~17 MB of disk per adapter (3.4 GB for N = 200) in a temp folder under /tmp, deleted at the end
(--keep keeps it). --budget-min skips an N whose projected build time would overrun the budget; the report says so.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_lorax.bench import measure  # noqa: E402
from edge_lorax.formats.peft import write_adapter  # noqa: E402

BASE_MODEL = "meta-llama/Llama-2-7b-hf"
TARGETS = ("q_proj", "v_proj")
REPORT_NAME = "build_scale"
DEFAULT_COMMAND = ".venv/bin/python benchmarks/build_scale.py"
VERSIONS = ("edge-lorax", "numpy", "safetensors", "click", "tqdm")
CODE = ("edge_lorax/builder", "edge_lorax/formats", "edge_lorax/cli.py", "benchmarks/build_scale.py")  # +dirty scope


def module_names(layers: int) -> list:
    return [f"model.layers.{i}.self_attn.{t}" for i in range(layers) for t in TARGETS]


def write_adapter_folder(path: Path, rng: np.random.Generator, layers: int, dim: int, rank: int):
    """One float16 PEFT LoRA folder (formats.peft.write_adapter), no 7B model needed."""
    factors = {}
    for module in module_names(layers):
        a = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(dim)  # (r, in): kaiming-like, as trained
        b = rng.standard_normal((dim, rank), dtype=np.float32) * 0.01  # (out, r)
        factors[module] = (a, b)
    write_adapter(path, factors, BASE_MODEL, task_type="CAUSAL_LM", dtype=np.float16)


def generate(root: Path, n: int, layers: int, dim: int, rank: int, seed: int = 0) -> tuple:
    """n adapter folders under root/adapters; returns (dirs, seconds, bytes on disk)."""
    start, dirs = time.perf_counter(), []
    for i in range(n):
        path = root / "adapters" / f"adapter-{i:04d}"
        write_adapter_folder(path, np.random.default_rng([seed, i]), layers, dim, rank)
        dirs.append(path)
        print(f"\rgenerated {i + 1}/{n}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    size = sum(f.stat().st_size for d in dirs for f in d.iterdir())
    return dirs, time.perf_counter() - start, size


def edge_lorax_command() -> list:
    script = Path(sys.executable).with_name("edge-lorax")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from edge_lorax.cli import main; main()"]


def child_env(threads: int) -> dict:
    """The build's environment: BLAS threads pinned (0 = leave the library default)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    return env


def run_build(dirs: list, out: Path, components: int, threads: int) -> dict:
    """`edge-lorax build` in a fresh process: wall seconds, the child's peak RSS, and its stdout summary."""
    cmd = edge_lorax_command() + ["build", *map(str, dirs), "-o", str(out), "--components", str(components)]
    env = child_env(threads)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"build of {len(dirs)} adapters failed with exit {proc.returncode}: {stdout}")
    summary = dict(line.split(": ", 1) for line in stdout.strip().splitlines() if ": " in line)
    return {"n": len(dirs), "wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "user_cpu_s": round(usage.ru_utime, 2), "sys_cpu_s": round(usage.ru_stime, 2),
            "load_average_after": [round(x, 2) for x in os.getloadavg()], "subspace_bytes": int(summary.get("bytes", 0)),
            "K": summary.get("K"), "fingerprint": summary.get("fingerprint")}


def updates(n: int, rank: int, chunk_rows: int = 512) -> int:
    """Streaming updates into a non-empty state: the stack's n * rank rows arrive in chunks of chunk_rows."""
    return -(-n * rank // chunk_rows) - 1


def verdict(results: list, rank: int = 16) -> dict:
    """Linearity: the marginal CPU seconds per extra streaming update (512 rows = 32 rank-16 adapters) between
    consecutive N agree within 25 % — time is linear in N up to one chunk (the first chunk fills an empty state and
    is cheap, a partial chunk costs a whole update). CPU, not wall: wall moves with a shared machine's load.
    Flatness: each peak RSS within 10 % of their mean."""
    done = [r for r in results if "wall_s" in r]
    if len(done) < 2:
        return {}
    cpu = [r["user_cpu_s"] + r["sys_cpu_s"] for r in done]
    pairs = list(zip(cpu, cpu[1:], done, done[1:]))
    marginal = [(c2 - c1) / (r2["n"] - r1["n"]) for c1, c2, r1, r2 in pairs]
    steps = [(c2 - c1, updates(r2["n"], rank) - updates(r1["n"], rank)) for c1, c2, r1, r2 in pairs]
    per_update = [dc / du for dc, du in steps if du > 0] or marginal  # tiny stacks fit in one chunk: per adapter
    rss = [r["peak_rss_mib"] for r in done]
    mean = sum(rss) / len(rss)
    deviation = max(abs(x - mean) / mean for x in rss)
    return {"wall_seconds_per_adapter": [round(r["wall_s"] / r["n"], 3) for r in done],
            "cpu_seconds_per_adapter": [round(c / r["n"], 3) for c, r in zip(cpu, done)],
            "marginal_cpu_seconds_per_adapter": [round(m, 3) for m in marginal],
            "marginal_cpu_seconds_per_update": [round(m, 2) for m in per_update],
            "time_roughly_linear": min(per_update) > 0 and max(per_update) / min(per_update) <= 1.25,
            "peak_rss_max_deviation_from_mean": round(deviation, 4), "peak_rss_flat_within_10pct": deviation <= 0.10}


def blas_env() -> dict:
    """The BLAS thread variables this script was started with (the builds get child_env's)."""
    return {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ}


def markdown(report: dict) -> str:
    s = report["setup"]
    lines = ["# Build scale: `edge-lorax build` time and peak RSS vs number of adapters", "",
             *measure.stamp_md(report["stamp"]), f"- `+dirty` judged on: {', '.join(CODE)}", "",
             f"Adapters: synthetic Llama-7B shape, {s['layers']} layers x {'/'.join(s['targets'])} ({s['modules']} modules), "
             f"{s['dim']}x{s['dim']}, rank {s['rank']}, {s['dtype']} safetensors, {s['bytes_per_adapter'] / 2**20:.1f} MiB each; "
             f"generated in {report['generation_s']:.0f} s. Build: `--components {s['components']}` (default max_rank "
             f"512, chunk_rows 512), each N in a fresh `edge-lorax build` process, BLAS threads: {s['blas_threads']}.", "",
             "| N | wall (s) | wall s / adapter | CPU (s) | CPU s / adapter | peak RSS (MiB) | subspace (MiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        if "wall_s" in r:
            cpu = r["user_cpu_s"] + r["sys_cpu_s"]
            lines.append(f"| {r['n']} | {r['wall_s']:.0f} | {r['wall_s'] / r['n']:.2f} | {cpu:.0f} | {cpu / r['n']:.2f} | "
                         f"{r['peak_rss_mib']:.0f} | {r['subspace_bytes'] / 2**20:.1f} |")
        else:
            lines.append(f"| {r['n']} | skipped: {r['skipped']} | | | | | |")
    v = report["verdict"]
    if v:
        lines += ["", f"Marginal CPU seconds between consecutive N: per extra adapter "
                      f"{', '.join(f'{m:.2f}' for m in v['marginal_cpu_seconds_per_adapter'])}; per extra 512-row "
                      f"streaming update {', '.join(f'{m:.1f}' for m in v['marginal_cpu_seconds_per_update'])} "
                      f"({'linear in N up to one chunk' if v['time_roughly_linear'] else 'NOT linear'}: within 25 %). Peak RSS, largest "
                      f"deviation from the mean: {100 * v['peak_rss_max_deviation_from_mean']:.1f} % "
                      f"({'flat within 10 %' if v['peak_rss_flat_within_10pct'] else 'NOT flat within 10 %'})."]
    if report.get("notes"):
        lines += ["", "Notes:", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def render(report_dir: Path, notes: list):
    """Re-render build_scale.md from build_scale.json, appending notes to the JSON's list."""
    path = report_dir / f"{REPORT_NAME}.json"
    report = json.loads(path.read_text())
    if "stamp" not in report:
        sys.exit(f"{path}: written before the shared stamp (no 'stamp' key); regenerate it with `{DEFAULT_COMMAND}`")
    report["notes"] = report.get("notes", []) + notes
    report["verdict"] = verdict(report["results"], report["setup"]["rank"])
    path.write_text(json.dumps(report, indent=1) + "\n")
    (report_dir / f"{REPORT_NAME}.md").write_text(markdown(report))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--components", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="OPENBLAS_NUM_THREADS for the builds (0: library default, i.e. all cores).")
    p.add_argument("--budget-min", type=float, default=25.0, help="Skip an N whose projected build would overrun this.")
    p.add_argument("--workdir", type=Path, help="Where adapters go (default: a new temp folder under /tmp).")
    p.add_argument("--keep", action="store_true", help="Keep the generated adapters.")
    p.add_argument("--report-dir", type=Path, default=ROOT / "benchmarks" / "reports")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--note", action="append", default=[], help="A line appended to the Markdown report.")
    p.add_argument("--render", action="store_true",
                   help="Only rewrite the Markdown from the JSON report (with any --note lines added to it).")
    return p.parse_args(argv)


def build_each(args, dirs: list, root: Path) -> list:
    """One fresh `edge-lorax build` per N, smallest first; an N projected past --budget-min is skipped."""
    results, deadline = [], time.perf_counter() + 60 * args.budget_min
    for n in sorted(args.n):
        projected = results[-1]["wall_s"] / results[-1]["n"] * n if results and "wall_s" in results[-1] else 0
        if time.perf_counter() + projected > deadline:
            results.append({"n": n, "skipped": f"projected {projected / 60:.0f} min exceeds the {args.budget_min:g} min budget"})
            continue
        out = root / f"subspace-{n}"
        results.append(run_build(dirs[:n], out, args.components, args.threads))
        shutil.rmtree(out)
        print(json.dumps(results[-1]), flush=True)
    return results


def write_report(report: dict, report_dir: Path):
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"{REPORT_NAME}.json").write_text(measure.portable(json.dumps(report, indent=1) + "\n"))
    (report_dir / f"{REPORT_NAME}.md").write_text(measure.portable(markdown(report)))
    print(f"wrote {report_dir / REPORT_NAME}.json and .md", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        return render(args.report_dir, args.note)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="build_scale_", dir="/tmp"))
    command = " ".join([DEFAULT_COMMAND, *(argv if argv is not None else sys.argv[1:])]).strip()
    started, stamp = time.time(), measure.stamp(command, VERSIONS, CODE)
    try:
        dirs, gen_s, size = generate(root, max(args.n), args.layers, args.dim, args.rank)
        results = build_each(args, dirs, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report = {"stamp": measure.finish(stamp), "blas_threads_env": blas_env(),
              "setup": {"layers": args.layers, "targets": list(TARGETS), "modules": 2 * args.layers, "dim": args.dim,
                        "rank": args.rank, "dtype": "float16", "components": args.components, "blas_threads": args.threads or "default",
                        "bytes_per_adapter": size // max(args.n)},
              "generation_s": round(gen_s, 1), "results": results, "verdict": verdict(results, args.rank), "notes": args.note,
              "total_s": round(time.time() - started, 1)}
    print(json.dumps(report["verdict"]))
    if not args.no_report and (args.layers, args.dim, args.rank) == (32, 4096, 16):  # only the full shape is reported
        write_report(report, args.report_dir)


if __name__ == "__main__":
    main()
