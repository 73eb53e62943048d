"""One side of the arm64 check: run a bundle for one user on fixed inputs and save what it computed.

Runs wherever edge_lorax's torch-free runtime is installed: on the x86 host (the project's .venv) and inside the
emulated arm64 root filesystem (numpy, onnxruntime, onnxruntime-genai, tokenizers, jinja2; no torch). It reads an
inputs file that check.py wrote on the host and writes one .npz:

- encoder bundles: per variant present (fp32, int8, fused; a per-example bundle: `per_example`, one
  user per text through run_mixed), `<variant>.out` (batch, labels | hidden)
  for the inputs' texts, one ONNX Runtime thread;
- decoder bundles: `prompt_logits` (prompts, vocab), the logits after prefilling each free prompt; `prompt_tokens_<i>`
  the greedy continuation of prompt i; `task_tokens_<i>` the greedy answer to task row i (asked in the task format
  the user was trained on, formats.prompts) and `task_exact` (rows,) 1 when that answer is the label's own tokens
  then EOS; the task rows are checkpointed every CHECKPOINT_ROWS rows to OUT.rows.npz (task tokens only; the free prompts run
  after the rows), so an interrupted run resumes there;
- ExecuTorch bundles (`target: executorch`): `pte.out` (texts, labels), the program's logits, one text per call.

Usage: python probe.py BUNDLE USER INPUTS.json OUT.npz [--shard=J/K]
(--shard: a decoder's task rows i % K == J only, into OUT.rows.npz and nothing else; check.py --shards runs K at once)
Does not compare anything (check.py does); imports torch only for an ExecuTorch bundle (its binding needs it).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from edge_lorax.formats.atomic import atomic_file

ENCODER_VARIANTS = ("fp32", "int8", "fused")
CHECKPOINT_ROWS = 5  # ~6-10 min of an emulated core; a stopped run loses less than that


def encoder(bundle: Path, user: Path, inputs: dict) -> dict:
    """{variant.out: outputs (batch, ...)} for every variant the bundle holds (first output: logits or features)."""
    from edge_lorax.runtime import SessionConfig, encode, load_user, open_bundle, run_arrays, run_mixed

    files = json.loads((bundle / "manifest.json").read_text())["files"]
    out = {}
    for variant in [v for v in ENCODER_VARIANTS if files.get(v)]:
        b = open_bundle(bundle, SessionConfig(threads=1, variant=variant))
        u, tokens = load_user(b, user), encode(b, inputs["texts"])
        result = run_mixed(b, [u] * len(inputs["texts"]), tokens) if b.per_example else run_arrays(b, u, tokens)
        name = "per_example" if b.per_example else variant
        out[f"{name}.out"] = np.asarray(result[b.outputs[0]], np.float32)
    return out


def pte(bundle: Path, user: Path, inputs: dict) -> dict:
    """{"pte.out" (fp32) or "pte_int8.out": logits (texts, labels)} from an ExecuTorch bundle's model.pte (XNNPACK, its
    manifest's precision), one text per call (no padding), the user's tensors in the manifest's order (runtime.pte).
    Imports torch: ExecuTorch's binding needs it."""
    import torch
    from executorch.runtime import Runtime
    from tokenizers import Tokenizer

    from edge_lorax.runtime.pte import method_inputs, user_tensors

    method = Runtime.get().load_program(str(bundle / "model.pte")).load_method("forward")
    tok, tensors, out = Tokenizer.from_file(str(bundle / "tokenizer.json")), user_tensors(bundle, user), []
    tok.no_padding()  # tokenizer.json may pad to a fixed width; one text per call needs none
    tok.enable_truncation(128)
    for text in inputs["texts"]:
        ids = np.array([tok.encode(text).ids], np.int64)  # (1, T)
        tokens = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds = [torch.from_numpy(a) for a in method_inputs(bundle, tokens, tensors)]
        out.append(method.execute(feeds)[0].numpy())
    precision = json.loads((bundle / "manifest.json").read_text())["method"].get("precision", "fp32")
    return {("pte" if precision == "fp32" else f"pte_{precision}") + ".out": np.concatenate(out).astype(np.float32)}


def _prefill_logits(llm, ids: list, user: str) -> np.ndarray:
    """The next-token logits after prefilling `ids` for `user` (vocab,)."""
    og = llm._og
    params = og.GeneratorParams(llm.model)
    params.set_search_options(max_length=len(ids) + 1)
    gen = og.Generator(llm.model, params)
    gen.set_active_adapter(llm.adapters, user)
    gen.append_tokens(ids)
    return np.asarray(gen.get_logits(), np.float32).reshape(-1)


def load_rows(progress: Path) -> dict:
    """What an interrupted decoder probe saved (empty when none): its arrays and the seconds it had spent."""
    if not progress.is_file():
        return {}
    with np.load(progress) as saved:
        return {k: saved[k] for k in saved.files}


def save_npz(path: Path, arrays: dict) -> None:
    """Write `arrays` to `path` atomically (a killed run leaves the old file or none, never half of one)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: savez would add .npz to a bare name
        np.savez_compressed(f, **arrays)


def _prompts(llm, inputs: dict) -> dict:
    """Prefill logits (prompts, vocab) and greedy tokens of the free prompts."""
    out = {"prompt_logits": np.stack([_prefill_logits(llm, llm.encode(p, chat=True), "u") for p in inputs["prompts"]])}
    for i, p in enumerate(inputs["prompts"]):
        out[f"prompt_tokens_{i}"] = np.array(list(llm.generate(p, "u", inputs["max_new_tokens"], chat=True)), np.int64)
    return out


def _task_rows(llm, inputs: dict, progress: Path, rows: range, start: float) -> dict:
    """Greedy answers to the task rows `rows` (task_tokens_<i>), skipping those `progress` holds and checkpointing
    there every CHECKPOINT_ROWS rows; seconds_spent counts every resumed run since `start`."""
    out = load_rows(progress)
    spent = float(out.pop("seconds_spent", 0.0))
    labels = inputs["labels"]
    longest = max(len(llm.tokenizer.encode(lab, add_special_tokens=False).ids) for lab in labels)
    todo = [i for i in rows if f"task_tokens_{i}" not in out]
    for n, i in enumerate(todo):  # generate stops at EOS, which it does not yield
        out[f"task_tokens_{i}"] = np.array(list(llm.generate(inputs["texts"][i], "u", longest + 1, choices=labels)), np.int64)
        if (n + 1) % CHECKPOINT_ROWS == 0:
            print(f"[probe] {len(out)}/{len(inputs['texts'])} task rows", file=sys.stderr, flush=True)
            save_npz(progress, {**out, "seconds_spent": np.array(spent + time.perf_counter() - start)})
    return {**out, "seconds_spent": np.array(spent + time.perf_counter() - start)}


def decoder(bundle: Path, user: Path, inputs: dict, progress: Path, shard: tuple = (0, 1)) -> dict:
    """Greedy answers and exact match on the task rows, then prefill logits and greedy tokens of the free prompts.
    Checkpoints the task tokens to `progress` every CHECKPOINT_ROWS rows: an emulated 200-row run takes hours, a rerun
    resumes where it stopped (check.py --progress carries that file across machines). shard (j, K), K > 1: only the
    rows i % K == j, and nothing but the checkpoint (check.py merges the shards; an unsharded run then completes)."""
    from edge_lorax.runtime.llm import load_llm

    start, llm = time.perf_counter(), load_llm(bundle, threads=1)
    llm.add_user("u", user)
    out = _task_rows(llm, inputs, progress, range(shard[0], len(inputs["texts"]), shard[1]), start)
    if shard[1] > 1:
        save_npz(progress, out)  # a shard's product: its rows
        return out
    rows_done = time.perf_counter()
    out.update(_prompts(llm, inputs))  # after the rows: the checkpoint holds task tokens only (a few KB to carry)
    answers = [llm.tokenizer.encode(lab, add_special_tokens=False).ids for lab in inputs["labels"]]
    exact = [out[f"task_tokens_{i}"].tolist() == answers[t] for i, t in enumerate(inputs["targets"])]
    out["task_exact"] = np.array(exact, np.int8)
    out["seconds_spent"] += time.perf_counter() - rows_done
    return out


def main(argv: list) -> int:
    bundle, user, inputs_path, out_path = (Path(a) for a in argv[:4])
    shard = tuple(int(n) for n in argv[4].removeprefix("--shard=").split("/")) if len(argv) > 4 else (0, 1)
    inputs = json.loads(inputs_path.read_text())
    start = time.perf_counter()
    target = json.loads((bundle / "manifest.json").read_text())["target"]
    if target == "genai-decoder":
        arrays = decoder(bundle, user, inputs, out_path.with_suffix(".rows.npz"), shard)
        if shard[1] > 1:
            return 0  # a shard's product is its checkpoint
        arrays["seconds"] = arrays.pop("seconds_spent")  # over every resumed run
    else:
        arrays = (pte if target == "executorch" else encoder)(bundle, user, inputs)
        arrays["seconds"] = np.array(time.perf_counter() - start)
    save_npz(out_path, arrays)
    out_path.with_suffix(".rows.npz").unlink(missing_ok=True)  # the decoder's checkpoint, now in OUT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
