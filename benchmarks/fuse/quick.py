"""Quick interleaved latency of ONNX graphs at batch 1: the unfused and fused (`export --fuse`) EigenLoRAx bundle
graphs next to a plain MiniLM (e.g. optimum's export after ORTOptimizer O2). One process, one intra-op thread, the
runtime's session options; blocks of consecutive runs per graph, rotated each round (switching graphs every run
evicts caches); medians and p10 in ms, each also as a ratio to the last graph. A quick look, not the benchmark
(edge_lorax.bench runs one process per measurement).

    .venv/bin/python benchmarks/fuse/quick.py --graph unfused=B/model.onnx --graph fused=B/model.fused.onnx \\
        --graph o2=PLAIN_O2/model_optimized.onnx [--seq 16 64] [--rounds 7] [--block 40] [--clock cpu] [--json out.json]

Token inputs are fed as the graph declares them (input_ids, attention_mask, token_type_ids zeros); a bundle graph
runs its default user (the optional inputs' initializers).
"""

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort

from edge_lorax.runtime.bundle import SessionConfig, session_options


def feeds(session: ort.InferenceSession, seq: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, size=(1, seq), dtype=np.int64)
    out = {}
    for i in session.get_inputs():
        if i.name == "input_ids":
            out[i.name] = ids
        elif i.name == "attention_mask":
            out[i.name] = np.ones((1, seq), np.int64)
        elif i.name == "token_type_ids":
            out[i.name] = np.zeros((1, seq), np.int64)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--seq", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the calling thread's CPU time per run (ORT computes on it at 1 thread), which leaves out "
                         "time descheduled by other processes; for shared machines")
    ap.add_argument("--json")
    args = ap.parse_args()
    graphs = dict(g.split("=", 1) for g in args.graph)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    so = session_options(SessionConfig(threads=args.threads))
    sessions = {n: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for n, p in graphs.items()}
    report = {}
    for seq in args.seq:
        inputs = {n: feeds(s, seq) for n, s in sessions.items()}
        for n, s in sessions.items():
            for _ in range(args.warmup):
                s.run(None, inputs[n])
        times = {n: [] for n in sessions}
        for r in range(args.rounds):
            order = list(sessions) if r % 2 == 0 else list(sessions)[::-1]
            for n in order:
                s, x = sessions[n], inputs[n]
                for _ in range(args.block):
                    t = clock()
                    s.run(None, x)
                    times[n].append(clock() - t)
        med = {n: 1e3 * statistics.median(t) for n, t in times.items()}
        base = med[list(sessions)[-1]]
        p10 = {n: 1e3 * float(np.percentile(t, 10)) for n, t in times.items()}
        base10 = p10[list(sessions)[-1]]
        report[f"seq{seq}"] = {n: {"median_ms": round(m, 3), "p10_ms": round(p10[n], 3),
                           "p90_ms": round(1e3 * float(np.percentile(times[n], 90)), 3),
                           "median_vs_last": round(m / base, 3), "p10_vs_last": round(p10[n] / base10, 3)}
                       for n, m in med.items()}
        for n, v in report[f"seq{seq}"].items():
            print(f"seq {seq:3d}  {n:10s} median {v['median_ms']:7.3f} ms (x{v['median_vs_last']:.3f})  "
                  f"p10 {v['p10_ms']:7.3f} ms (x{v['p10_vs_last']:.3f})  p90 {v['p90_ms']:7.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"clock": args.clock, "threads": args.threads, "rounds": args.rounds, "block": args.block,
                       "graphs": graphs, "ort": ort.__version__, **report}, f, indent=1)


if __name__ == "__main__":
    main()
