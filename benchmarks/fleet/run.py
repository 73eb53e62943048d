"""Fleet scale (issue 16): the per-module build local vs Ray, many users trained in one pass vs one at a time, and
project-many local vs Ray. Each cell runs in a fresh process, is stamped and saved as runs/<cell>.json; a cell
already saved is skipped, so an interrupted run resumes (delete a file to re-measure it). report.py renders
report.md from the cells. Run it on a quiet machine: nothing else on the cores.

    .venv/bin/python benchmarks/fleet/run.py                   # every cell (~50 min on 2 cores)
    .venv/bin/python benchmarks/fleet/run.py --cells build     # build-local, build-ray1, build-ray2
    .venv/bin/python benchmarks/fleet/run.py --quick           # plumbing: 8 tiny-shaped adapters, 4 users (runs-quick/)

build-*: the 200 Llama-7B-shaped adapters of benchmarks/build_scale.py (32 layers x q/v, 4096 x 4096, r=16, float16;
~3.4 GB under --workdir, generated once), `edge-lorax build -k 32 [--executor ray --workers W] --task-stats`, wall
time and the driver's peak RSS (wait4), per-module task seconds and each Ray worker's peak RSS, sha256 of the files.
train-*: 64 users, each 320 rows (256 train / 32 validation / 32 test, the loader's 80/10/10 split) cut from the
classification tasks below (disjoint slices), MiniLM, the committed adapters' subspace (-k 8), 24 steps of batch 32:
one process trains them one at a time (builder.train.train_coeffs each, as `edge-lorax train`), another in groups
of --users-per-batch (16) and in groups of 4 (builder.fleet.train_many, as `edge-lorax train-many`).
project-*: `edge-lorax project-many` of the committed adapters (each listed --repeat times) local vs Ray.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edge_lorax.bench import measure  # noqa: E402

HERE = Path(__file__).resolve().parent
CODE = ("edge_lorax/builder", "edge_lorax/formats", "edge_lorax/cli.py", "benchmarks/fleet")
VERSIONS = ("edge-lorax", "numpy", "torch", "transformers", "ray", "safetensors")
TASKS = ("vader:tweets-binary", "vader:tweets-3class", "vader:movies-binary", "vader:movies-3class",
         "vader:amazon-binary", "vader:amazon-3class", "vader:nyt-binary", "vader:nyt-3class", "spam:sms",
         "trec:coarse", "disaster:request", "disaster:food")
USER_ROWS = 320  # -> 256 train rows after the loader's 80/10/10 split
TRAIN = {"lr": 2e-2, "batch_size": 32, "max_length": 64, "steps": 24, "eval_every": 0}


def edge_lorax() -> list:
    script = Path(sys.executable).with_name("edge-lorax")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge_lorax"]


def run_child(cmd: list) -> dict:
    """cmd in a fresh process, measured with resource.getrusage of the children (peak RSS of the largest child)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
            "peak_rss_mib_max_child": round(after.ru_maxrss / 1024, 1), "exit": proc.returncode, "stdout": proc.stdout}


def sha256s(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------------------- build

def adapters_7b(workdir: Path, n: int, layers: int, dim: int) -> list:
    """The build_scale adapters (generated once under workdir, reused)."""
    from build_scale import generate

    folder = workdir / "adapters"
    dirs = sorted(folder.glob("adapter-*"))
    if len(dirs) >= n and all((d / "adapter_model.safetensors").is_file() for d in dirs[:n]):
        return dirs[:n]
    return generate(workdir, n, layers, dim, 16)[0]


def build_cell(dirs: list, workdir: Path, workers: int | None, k: int, shape: dict) -> dict:
    """One `edge-lorax build` (local when workers is None, else a local Ray cluster of `workers` CPUs)."""
    out, stats = workdir / f"subspace-{workers or 'local'}", workdir / f"stats-{workers or 'local'}.json"
    cmd = edge_lorax() + ["build", *map(str, dirs), "-o", str(out), "-k", str(k), "--overwrite", "--task-stats", str(stats)]
    if workers:
        cmd += ["--executor", "ray", "--workers", str(workers)]
    res = run_child(cmd)
    tasks = json.loads(stats.read_text())
    workers_rss = {}
    for t in tasks:
        workers_rss[str(t["pid"])] = max(workers_rss.get(str(t["pid"]), 0), t["peak_rss_mib"])
    return {"adapters": len(dirs), "workers": workers, "wall_s": res["wall_s"], "cpu_s_children": res["cpu_s"],
            "driver_peak_rss_mib": res["peak_rss_mib_max_child"], "tasks": tasks, "worker_peak_rss_mib": workers_rss,
            "sha256": sha256s(out), "k": k, "shape": shape}


# ------------------------------------------------------------------------------------------------------- train

def user_files(folder: Path, users: int, tasks=TASKS, rows: int = USER_ROWS) -> list:
    """`users` CSV files (text,label) of `rows` rows: user i takes slice i // len(tasks) of task i % len(tasks)'s
    training rows (the loader's seeded split), so users of one task hold disjoint rows."""
    import csv

    from edge_lorax.builder.data import load_task

    folder.mkdir(parents=True, exist_ok=True)
    loaded, files = {}, []
    for i in range(users):
        spec, part = tasks[i % len(tasks)], i // len(tasks)
        task = loaded.setdefault(spec, load_task(spec, seed=0))
        texts, targets = task.train.texts[part * rows:(part + 1) * rows], task.train.targets[part * rows:(part + 1) * rows]
        if len(texts) < rows:
            raise SystemExit(f"{spec}: {len(task.train)} training rows, user {i} needs rows {part * rows}..{(part + 1) * rows}")
        path = folder / f"u{i:02d}-{spec.replace(':', '-')}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((t, task.labels[int(y)]) for t, y in zip(texts, targets))
        files.append(path)
    return files


def train_cell(mode: str, data: Path, subspace: Path, users_per_batch: int, out: Path) -> dict:
    """Fresh process: benchmarks/fleet/train_cell.py (one at a time, or together in groups)."""
    cmd = [sys.executable, str(HERE / "train_cell.py"), mode, str(data), str(subspace), str(out),
           "--users-per-batch", str(users_per_batch), "--config", json.dumps(TRAIN)]
    if mode == "together":
        cmd += ["--compare", str(out.parent / "trained-alone")]
    res = run_child(cmd)
    return {**json.loads(res["stdout"].strip().splitlines()[-1]), "process_wall_s": res["wall_s"],
            "peak_rss_mib": res["peak_rss_mib_max_child"]}


def minilm_subspace(workdir: Path) -> Path:
    out = workdir / "minilm-subspace"
    if not (out / "subspace_config.json").is_file():
        dirs = sorted(str(p.parent) for p in (ROOT / "adapters").glob("*/adapter_config.json"))
        subprocess.run(edge_lorax() + ["build", *dirs, "-o", str(out), "-k", "8", "--overwrite"], check=True,
                       capture_output=True)
    return out


# ----------------------------------------------------------------------------------------------------- project

def project_cell(subspace: Path, repeat: int, workdir: Path, workers: int | None) -> dict:
    dirs = sorted(str(p.parent) for p in (ROOT / "adapters").glob("*/adapter_config.json")) * repeat
    out = workdir / f"projected-{workers or 'local'}"
    cmd = edge_lorax() + ["project-many", str(subspace), *dirs, "-o", str(out), "--overwrite"]
    if workers:
        cmd += ["--executor", "ray", "--workers", str(workers)]
    res = run_child(cmd)
    rows = json.loads((out / "projections.json").read_text())
    task_s = [r["seconds"] for r in rows]
    return {"adapters": len(rows), "failed": sum(r["status"] != "ok" for r in rows), "workers": workers,
            "wall_s": res["wall_s"], "adapters_per_s": round(len(rows) / res["wall_s"], 2),
            "task_s_sum": round(sum(task_s), 3), "task_s_median": sorted(task_s)[len(task_s) // 2],
            "peak_rss_mib": res["peak_rss_mib_max_child"]}


# ------------------------------------------------------------------------------------------------------- cells

def cells(args, workdir: Path) -> dict:
    """name -> zero-argument function measuring it."""
    n, layers, dim = (8, 2, 256) if args.quick else (200, 32, 4096)
    users, upb = (4, 2) if args.quick else (64, args.users_per_batch)
    dirs = lambda: adapters_7b(workdir, n, layers, dim)  # noqa: E731
    data = lambda: user_files(workdir / f"users-{users}", users)  # noqa: E731
    sub = lambda: minilm_subspace(workdir)  # noqa: E731
    shape = {"layers": layers, "dim": dim}
    out = {"build-local": lambda: build_cell(dirs(), workdir, None, args.k, shape),
           "build-ray1": lambda: build_cell(dirs(), workdir, 1, args.k, shape),
           "build-ray2": lambda: build_cell(dirs(), workdir, 2, args.k, shape),
           "train-alone": lambda: (data(), train_cell("alone", workdir / f"users-{users}", sub(), upb,
                                                      workdir / "trained-alone"))[1],
           "train-together": lambda: (data(), train_cell("together", workdir / f"users-{users}", sub(), upb,
                                                         workdir / "trained-together"))[1],
           "train-together-u4": lambda: (data(), train_cell("together", workdir / f"users-{users}", sub(), 4,
                                                            workdir / "trained-together-u4"))[1],
           "project-local": lambda: project_cell(sub(), args.repeat, workdir, None),
           "project-ray2": lambda: project_cell(sub(), args.repeat, workdir, 2)}
    return {k: v for k, v in out.items() if any(k.startswith(c) for c in args.cells)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["build", "train", "project"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edge-lorax-fleet"))
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--users-per-batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=8, help="project-many: each committed adapter listed this many times")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    runs = HERE / ("runs-quick" if args.quick else "runs")
    runs.mkdir(exist_ok=True)
    workdir = args.workdir / ("quick" if args.quick else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python benchmarks/fleet/run.py", *(argv if argv is not None else sys.argv[1:])])
    for name, measure_cell in cells(args, workdir).items():
        path = runs / f"{name}.json"
        if path.is_file():
            print(f"{name}: cached ({path.name})", file=sys.stderr)
            continue
        stamp = measure.stamp(command, VERSIONS, CODE)
        print(f"{name}: running (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
        result = measure_cell()
        path.write_text(measure.portable(json.dumps({"stamp": measure.finish(stamp), "cell": name, **result},
                                                    indent=1) + "\n"))
        print(f"{name}: done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
