"""ExecuTorch's .pte beside ONNX Runtime on the same MiniLM encoder bundle and users, measured in one run.

Rows (each measurement in its own fresh process, runtimes alternated, `rounds` times over):
- latency p50 / p90 (ms) at 1 and 2 threads, batch 1 x seq 16 / 64 (token ids seeded, no padding): ORT fp32
  (`model.onnx`, the runtime's session options), ORT int8 (`model.int8.onnx`), ExecuTorch fp32 (`model.pte`, XNNPACK,
  its threadpool reset to the thread count) and, with --pte-int8, ExecuTorch int8 (`export --target executorch
  --quantize int8`: XNNPACKQuantizer's dynamic int8 Linear layers);
- switch cost: per-run time alternating two preloaded users minus the time with one user (batch 1 x seq 16, 1
  thread), and the time to make a user ready from its file (ORT: runtime.load_user; ExecuTorch: runtime.pte
  user_tensors + torch.from_numpy);
- memory for 1000 resident users: RssAnon growth while holding 1000 loaded copies of a user;
- file sizes.
Usage: python benchmarks/executorch/bench.py --pte PTE_BUNDLE [--pte-int8 PTE_BUNDLE] --onnx ONNX_BUNDLE --user U1 --user U2 [--rounds 2]
       [--out benchmarks/executorch]   (writes report.json and report.md)
The machine is shared: compare rows of one run only, as ratios. Does not export (edge-lorax export does).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RUNS, WARMUP = 200, 20


def _tokens(seq: int, seed: int = 0) -> dict:
    ids = np.random.default_rng(seed).integers(1000, 20000, size=(1, seq), dtype=np.int64)  # (1, seq)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


class _Ort:
    def __init__(self, bundle: str, threads: int, variant: str):
        from edge_lorax.runtime import SessionConfig, load_user, open_bundle, run_arrays

        self.b = open_bundle(bundle, SessionConfig(threads=threads, variant=variant))
        self.load = lambda path: load_user(self.b, path)  # noqa: E731
        self.run = lambda user, tokens: run_arrays(self.b, user, tokens, ["logits"])  # noqa: E731


class _Et:
    def __init__(self, bundle: str, threads: int):
        import torch
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        from edge_lorax.runtime.pte import user_tensors

        _unsafe_reset_threadpool(threads)
        self.method = Runtime.get().load_program(str(Path(bundle) / "model.pte")).load_method("forward")
        self.load = lambda path: [torch.from_numpy(a) for a in user_tensors(bundle, path)]  # noqa: E731
        self.run = lambda user, tokens: self.method.execute([torch.from_numpy(tokens["input_ids"]),  # noqa: E731
                                                             torch.from_numpy(tokens["attention_mask"]), *user])


def _runtimes(args) -> tuple:
    return ("ort-fp32", "ort-int8", "executorch") + (("executorch-int8",) if args.pte_int8 else ())


def _open(args) -> object:
    if args.runtime.startswith("executorch"):
        return _Et(args.pte_int8 if args.runtime == "executorch-int8" else args.pte, args.threads)
    return _Ort(args.onnx, args.threads, args.runtime.split("-")[1])


def _timed(fn, n: int) -> list:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def worker(args) -> dict:
    """One measurement in this process: latency, switch or memory."""
    rt = _open(args)
    users = [rt.load(u) for u in args.user]
    if args.what == "latency":
        tokens = _tokens(args.seq)
        _timed(lambda: rt.run(users[0], tokens), WARMUP)
        ms = _timed(lambda: rt.run(users[0], tokens), RUNS)
        return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90))}
    if args.what == "switch":
        tokens, pair = _tokens(16), users[:2]
        _timed(lambda: rt.run(users[0], tokens), WARMUP)
        same = [np.median(_timed(lambda: rt.run(users[0], tokens), 20)) for _ in range(10)]
        alt = [np.median([t for i in range(20) for t in _timed(lambda i=i: rt.run(pair[i % 2], tokens), 1)]) for _ in range(10)]
        ready = _timed(lambda: rt.load(args.user[1]), 50)
        return {"same_user_ms": float(np.median(same)), "alternating_ms": float(np.median(alt)),
                "switch_ms": float(np.median(alt) - np.median(same)), "user_from_file_ms": float(np.median(ready))}
    before = _rss_anon_kb()
    held = [rt.load(args.user[i % len(args.user)]) for i in range(1000)]
    after = _rss_anon_kb()
    tensors = sum(_nbytes(u) for u in held)  # the users' own arrays, exact (RssAnon also counts allocator slack)
    return {"rss_anon_1000_users_mib": (after - before) / 1024, "tensor_mib": tensors / 2**20, "held": len(held)}


def _nbytes(user) -> int:
    """Bytes of one loaded user's arrays: a LoadedUser's dict (ORT) or a list of torch tensors (ExecuTorch)."""
    arrays = user.arrays.values() if hasattr(user, "arrays") else user
    return sum(int(a.nbytes) for a in arrays)


def _spawn(args, runtime: str, what: str, threads: int = 1, seq: int = 16) -> dict:
    cmd = [sys.executable, __file__, "--worker", what, "--runtime", runtime, "--threads", str(threads), "--seq", str(seq),
           "--pte", args.pte, "--onnx", args.onnx, *sum((["--user", u] for u in args.user), []),
           *(["--pte-int8", args.pte_int8] if args.pte_int8 else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{runtime} {what}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    rows = {"latency": [], "switch": {}, "memory": {}}
    configs = [(rt, t, s) for s in (16, 64) for t in (1, 2) for rt in _runtimes(args)]
    for r in range(args.rounds):
        for rt, t, s in configs:
            print(f"[bench] round {r + 1}: {rt} {t} thread(s) seq {s}", file=sys.stderr, flush=True)
            rows["latency"].append({"runtime": rt, "threads": t, "seq": s, "round": r, **_spawn(args, rt, "latency", t, s)})
    for rt in [r for r in _runtimes(args) if r != "ort-int8"]:
        rows["switch"][rt] = _spawn(args, rt, "switch")
        rows["memory"][rt] = _spawn(args, rt, "memory")
    pte, onnx_dir = Path(args.pte), Path(args.onnx)
    rows["sizes_bytes"] = {"model.pte": (pte / "model.pte").stat().st_size, "model.onnx": (onnx_dir / "model.onnx").stat().st_size,
                           "model.int8.onnx": (onnx_dir / "model.int8.onnx").stat().st_size,
                           "user.npz": Path(args.user[0]).stat().st_size}
    if args.pte_int8:
        rows["sizes_bytes"]["model.pte (int8)"] = (Path(args.pte_int8) / "model.pte").stat().st_size
    rows["machine"] = {"cpu": _cpu(), "cores": len(os.sched_getaffinity(0)), "load_1min_at_end": os.getloadavg()[0],
                       "python": platform.python_version(), "commit": _commit()}
    if args.machine_note:
        rows["quiet"] = args.machine_note
    rows["command"] = ("python benchmarks/executorch/bench.py " + " ".join(sys.argv[1:])).replace(str(Path.home()), "~")
    return rows


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def markdown(rows: dict) -> str:
    """report.md: one table per measurement, medians over rounds."""
    lat = {}
    for r in rows["latency"]:
        lat.setdefault((r["runtime"], r["threads"], r["seq"]), []).append(r)
    lines = ["# ExecuTorch (.pte) beside ONNX Runtime: MiniLM encoder bundle, one user per run", "",
             f"- command: `{rows['command']}`", f"- machine: {rows['machine']['cpu']}, {rows['machine']['cores']} cores "
             f"({rows.get('quiet', 'shared with other jobs')}; 1-min load at the end {rows['machine']['load_1min_at_end']:.1f}), commit "
             f"{rows['machine']['commit']}; each row its own fresh process, runtimes alternated; compare within this run only",
             "", "## Latency, batch 1 (ms, p50 / p90, median over rounds)", "",
             "| runtime | threads | seq 16 | seq 64 |", "|---|---|---|---|"]
    for rt in dict.fromkeys(r["runtime"] for r in rows["latency"]):
        for t in (1, 2):
            cells = []
            for s in (16, 64):
                rs = lat[(rt, t, s)]
                cells.append(f"{np.median([r['p50_ms'] for r in rs]):.2f} / {np.median([r['p90_ms'] for r in rs]):.2f}")
            lines.append(f"| {rt} | {t} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Switching users (batch 1 x seq 16, 1 thread)", "",
              "| runtime | one user (ms/run) | two users alternating (ms/run) | switch cost (ms) | user ready from its file (ms) |",
              "|---|---|---|---|---|"]
    for rt, s in rows["switch"].items():
        lines.append(f"| {rt} | {s['same_user_ms']:.2f} | {s['alternating_ms']:.2f} | {s['switch_ms']:+.3f} | {s['user_from_file_ms']:.3f} |")
    lines += ["", "## Memory and files", "", "| runtime | 1000 resident users: RssAnon growth (MiB) | their tensors (MiB) |",
              "|---|---|---|"]
    lines += [f"| {rt} | {m['rss_anon_1000_users_mib']:.1f} | {m.get('tensor_mib', float('nan')):.1f} |"
              for rt, m in rows["memory"].items()]
    lines += ["", "| file | bytes |", "|---|---|"] + [f"| {k} | {v:,} |" for k, v in rows["sizes_bytes"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pte", required=True)
    p.add_argument("--pte-int8")
    p.add_argument("--machine-note", help="how loaded the machine was (default: shared with other jobs)")
    p.add_argument("--onnx", required=True)
    p.add_argument("--user", action="append", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    p.add_argument("--worker", dest="what")
    p.add_argument("--runtime", default="ort-fp32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seq", type=int, default=16)
    args = p.parse_args(argv)
    if args.what:
        print(json.dumps(worker(args)))
        return 0
    return publish(run(args), args.out, "report", markdown)


def publish(rows: dict, out: Path, stem: str, render) -> int:
    """out/STEM.json (sorted, indented) and out/STEM.md (render(rows)), the markdown also on stdout; exit status 0."""
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    (out / f"{stem}.md").write_text(render(rows))
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
