"""The decoder .pte (`export --model smollm2 --target executorch`) beside onnxruntime-genai's fp32 bundle of the same
subspace and user: do they answer alike, and how fast is each, measured in one run.

- parity (one process, 1 thread): next-token logits after the chat prompt of the arm64 check's three free prompts
  (max |Δ|), their greedy continuations (24 tokens; onnxruntime-genai stops at EOS, the program's tokens are cut
  there), and the greedy answers and exact match on the first ROWS test rows of the task (the runtime's task prompt,
  runtime.llm.LLM.encode(text, chat=True, choices=labels), the same ids on both sides);
- speed (each measurement its own fresh process, runtimes alternated, `rounds` times over, 1 and 2 threads): time to
  first token for a prompt of 32 and 128 seeded token ids, and decode ms per token over 32 further tokens;
- file sizes.
Usage: python benchmarks/executorch/decoder.py --pte PTE_BUNDLE --onnx GENAI_BUNDLE --user U.npz [--rows 50]
       [--rounds 2] [--out benchmarks/executorch]   (writes decoder.json and decoder.md)
Compare rows of one run only. Does not export (edge-lorax export does).
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
sys.path.insert(0, str(ROOT / "benchmarks" / "arm64"))
from bench import publish  # noqa: E402  (benchmarks/executorch, this script's folder)
from check import FREE_PROMPTS, decoder_inputs  # noqa: E402

NEW_TOKENS, PROMPT_LENGTHS = 32, (32, 128)


class _Genai:
    def __init__(self, bundle: str, user: str, threads: int):
        from edge_lorax.runtime.llm import load_llm

        self.llm = load_llm(bundle, threads=threads)
        self.llm.add_user("u", user)

    def generator(self, total: int):
        og = self.llm._og
        params = og.GeneratorParams(self.llm.model)
        params.set_search_options(max_length=total, min_length=total)
        gen = og.Generator(self.llm.model, params)
        gen.set_active_adapter(self.llm.adapters, "u")
        return gen

    def timed(self, ids: list) -> tuple:
        """(seconds to the first token, seconds per further token) for `ids`, NEW_TOKENS more."""
        gen, start = self.generator(len(ids) + NEW_TOKENS + 1), time.perf_counter()
        gen.append_tokens(ids)  # the prompt's forward pass
        gen.generate_next_token()  # the first token, from its logits
        first = time.perf_counter()
        for _ in range(NEW_TOKENS):  # one forward pass each
            gen.generate_next_token()
        return first - start, (time.perf_counter() - first) / NEW_TOKENS

    def logits(self, ids: list) -> np.ndarray:
        gen = self.generator(len(ids) + 1)
        gen.append_tokens(ids)
        return np.asarray(gen.get_logits(), np.float32).reshape(-1)


class _Pte:
    def __init__(self, bundle: str, user: str, threads: int):
        import torch
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        from edge_lorax.export.executorch_program import load_method
        from edge_lorax.runtime.pte import user_tensors

        _unsafe_reset_threadpool(threads)
        torch.set_num_threads(1)
        self.method = load_method(Path(bundle) / "model.pte")
        self.tensors = [torch.from_numpy(a) for a in user_tensors(bundle, user)]

    def timed(self, ids: list) -> tuple:
        import torch

        start = time.perf_counter()
        logits = self.method.execute([torch.tensor([ids]), torch.arange(len(ids)), *self.tensors])[0]
        token = int(logits[0, -1].argmax())
        first = time.perf_counter()
        for step in range(NEW_TOKENS):
            logits = self.method.execute([torch.tensor([[token]]), torch.tensor([len(ids) + step]), *self.tensors])[0]
            token = int(logits[0, -1].argmax())
        return first - start, (time.perf_counter() - first) / NEW_TOKENS

    def logits(self, ids: list) -> np.ndarray:
        from edge_lorax.export.executorch_decoder import prefill

        return prefill(self.method, ids, self.tensors)[0, -1]

    def greedy(self, ids: list, n: int, eos: set) -> list:
        from edge_lorax.export.executorch_decoder import greedy

        out = greedy(self.method, ids, [t.numpy() for t in self.tensors], n)
        cut = next((i for i, t in enumerate(out) if t in eos), len(out))
        return out[:cut]


def speed_worker(args) -> dict:
    rt = (_Pte if args.runtime == "executorch" else _Genai)(args.pte if args.runtime == "executorch" else args.onnx,
                                                           args.user, args.threads)
    ids = np.random.default_rng(0).integers(1000, 20000, size=args.length).tolist()
    rt.timed(ids[:8])  # warm-up
    runs = [rt.timed(ids) for _ in range(3)]
    return {"ttft_ms": float(np.median([r[0] for r in runs]) * 1e3), "decode_ms": float(np.median([r[1] for r in runs]) * 1e3)}


def parity(args) -> dict:
    genai, pte = _Genai(args.onnx, args.user, 1), _Pte(args.pte, args.user, 1)
    eos = set(np.atleast_1d(json.loads((Path(args.pte) / "manifest.json").read_text())["eos_token_id"]).tolist())
    prompts, diffs, equal = [genai.llm.encode(p, chat=True) for p in FREE_PROMPTS], [], 0
    for text, ids in zip(FREE_PROMPTS, prompts):
        diffs.append(float(np.abs(genai.logits(ids) - pte.logits(ids)).max()))
        equal += list(genai.llm.generate(text, "u", 24, chat=True)) == pte.greedy(ids, 24, eos)
    task = decoder_inputs(args.task, args.rows)
    answers = [genai.llm.tokenizer.encode(lab, add_special_tokens=False).ids for lab in task["labels"]]
    longest, same, em = max(len(a) for a in answers) + 1, 0, {"onnxruntime-genai": 0, "executorch": 0}
    for text, target in zip(task["texts"], task["targets"]):
        ours = pte.greedy(genai.llm.encode(text, chat=True, choices=task["labels"]), longest, eos)
        theirs = list(genai.llm.generate(text, "u", longest, choices=task["labels"]))
        same += ours == theirs
        em["executorch"] += ours == answers[target]
        em["onnxruntime-genai"] += theirs == answers[target]
    rows = len(task["texts"])
    return {"prompt_logits_max_abs_diff": max(diffs), "prompts_greedy_equal": f"{equal}/{len(prompts)}",
            "task": args.task, "rows": rows, "answers_equal": f"{same}/{rows}",
            "exact_match_pct": {k: 100.0 * v / rows for k, v in em.items()}}


def _spawn(args, runtime: str, threads: int, length: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--runtime", runtime, "--threads", str(threads), "--length", str(length),
           "--pte", args.pte, "--onnx", args.onnx, "--user", args.user]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{runtime}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    rows = {"parity": parity(args), "speed": []}
    for r in range(args.rounds):
        for threads in (1, 2):
            for length in PROMPT_LENGTHS:
                for rt in ("onnxruntime-genai", "executorch"):
                    print(f"[bench] round {r + 1}: {rt} {threads} thread(s) prompt {length}", file=sys.stderr, flush=True)
                    rows["speed"].append({"runtime": rt, "threads": threads, "prompt": length, "round": r,
                                          **_spawn(args, rt, threads, length)})
    pte, onnx_dir = Path(args.pte), Path(args.onnx)
    rows["sizes_bytes"] = {"model.pte": (pte / "model.pte").stat().st_size,
                           "model.onnx + data": sum(p.stat().st_size for p in onnx_dir.glob("model.onnx*"))}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    rows["machine"] = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "load_1min_at_end": os.getloadavg()[0],
                       "commit": commit, "note": args.machine_note or "shared with other jobs"}
    rows["command"] = ("python benchmarks/executorch/decoder.py " + " ".join(sys.argv[1:])).replace(str(Path.home()), "~")
    return rows


def markdown(rows: dict) -> str:
    p, m = rows["parity"], rows["machine"]
    lines = ["# Decoder .pte (ExecuTorch, static KV cache, coefficients as inputs) beside onnxruntime-genai", "",
             f"- command: `{rows['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores ({m['note']}; 1-min load at the end {m['load_1min_at_end']:.1f}), "
             f"commit {m['commit']}; speed rows: each its own fresh process, runtimes alternated; compare within this run",
             "", "## Same answers?", "",
             f"- next-token logits after the 3 chat prompts: max |Δ| {p['prompt_logits_max_abs_diff']:.3g}; greedy "
             f"continuations (24 tokens) equal: {p['prompts_greedy_equal']}",
             f"- `{p['task']}`, first {p['rows']} test rows: answers token-equal {p['answers_equal']}; exact match "
             + ", ".join(f"{k} {v:.1f} %" for k, v in p["exact_match_pct"].items()),
             "", "## Speed (ms, median over rounds)", "",
             "| runtime | threads | TTFT 32 | TTFT 128 | decode ms/token |", "|---|---|---|---|---|"]
    by = {}
    for r in rows["speed"]:
        by.setdefault((r["runtime"], r["threads"], r["prompt"]), []).append(r)
    for rt in ("onnxruntime-genai", "executorch"):
        for t in (1, 2):
            ttft = [np.median([r["ttft_ms"] for r in by[(rt, t, n)]]) for n in PROMPT_LENGTHS]
            decode = np.median([r["decode_ms"] for n in PROMPT_LENGTHS for r in by[(rt, t, n)]])
            lines.append(f"| {rt} | {t} | {ttft[0]:.1f} | {ttft[1]:.1f} | {decode:.2f} |")
    lines += ["", "| file | bytes |", "|---|---|"] + [f"| {k} | {v:,} |" for k, v in rows["sizes_bytes"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pte", required=True)
    p.add_argument("--onnx", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--task", default="vader:tweets-binary")
    p.add_argument("--rows", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    p.add_argument("--machine-note")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--runtime", default="executorch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--length", type=int, default=32)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(speed_worker(args)))
        return 0
    return publish(run(args), args.out, "decoder", markdown)


if __name__ == "__main__":
    sys.exit(main())
