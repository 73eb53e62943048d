"""Gemma 3 270M end to end from the CLI (issue 27): build a subspace from the adapters-gemma3/ family without the
held-out tweets-binary adapter -> project it (and spam-sms, a source) -> export fp32, int8 and int4 bundles ->
two users on one onnxruntime-genai session, each checked against torch fp32 with the same user injected.

Writes benchmarks/llm/gemma3-demo/demo.json and demo.md (work files under ~/.cache/edge-lorax/gemma3-demo/, reused
when present). Reports: the base model's greedy continuations of fixed prompts (torch, and the fp32 bundle with zero
coefficients = the base), each CLI step's wall time and output bytes, and per precision: the users' greedy task
answers on the same session (alternating users) and their token agreement with torch, plus the fp32 prefill logits'
max |Δ| from torch. Does not time decode speed (gemma3.py does, side by side with onnxruntime-genai).

    nice -n 5 .venv/bin/python benchmarks/llm/gemma3_demo.py
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from edge_lorax.bench import measure  # noqa: E402

ADAPTERS, HELD_OUT, SECOND = ROOT / "adapters-gemma3", "tweets-binary", "spam-sms"
WORK = Path(os.environ.get("EDGE_LORAX_CACHE", Path.home() / ".cache" / "edge-lorax")) / "gemma3-demo"
OUT = HERE / "gemma3-demo"
BASE_PROMPTS = ("The capital of France is", "The largest planet in the solar system is", "Water boils at",
                "A haiku about the sea:\n")
TASK_PROMPTS = {  # each user's own task, asked in the plain template it was trained on (label words given)
    HELD_OUT: (["what a wonderful day, I love this place", "worst service ever, never again"], ("negative", "positive")),
    SECOND: (["WINNER!! You have been selected for a free cruise. Call 0800 now to claim.",
              "Are we still meeting for lunch at one?"], ("ham", "spam")),
}
EDGE = [sys.executable, "-m", "edge_lorax"]
PRECISIONS = tuple(os.environ.get("DEMO_PRECISIONS", "fp32,int8,int4").split(","))


def cli(*args) -> float:
    """Run one edge-lorax command (nothing reused: the caller checks); its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run([*EDGE, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:  # recorded, not raised: an export refused by its verification is a finding
        return f"failed ({round(time.perf_counter() - start, 1)} s): " + done.stderr.strip().splitlines()[-1]
    return round(time.perf_counter() - start, 1)


def steps() -> dict:
    """build, project x2, export x3, each skipped when its output exists; {step: seconds or None (reused)}."""
    sources = sorted(p for p in ADAPTERS.iterdir() if (p / "adapter_config.json").is_file() and p.name != HELD_OUT)
    todo = {"build": (WORK / "sub", ["build", *sources, "-o", WORK / "sub", "-k", 8]),
            **{f"project {n}": (WORK / f"{n}.npz", ["project", WORK / "sub", ADAPTERS / n, "-o", WORK / f"{n}.npz"])
               for n in (HELD_OUT, SECOND)},
            **{f"export {p}": (WORK / p, ["export", "--model", "gemma3-270m", "--subspace", WORK / "sub", "--coeffs",
                                          WORK / f"{HELD_OUT}.npz", "-o", WORK / p, *(["--quantize", p] if p != "fp32" else [])])
               for p in PRECISIONS}}
    WORK.mkdir(parents=True, exist_ok=True)
    return {name: None if out.exists() else cli(*args) for name, (out, args) in todo.items()}


def torch_net():
    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_causal_lm, load_tokenizer, resolve_model
    from edge_lorax.formats.subspace import read_subspace

    path = resolve_model("gemma3-270m")
    net, tok = load_causal_lm(path), load_tokenizer(path)
    inject_subspace(net, read_subspace(WORK / "sub"))
    return net, tok


def torch_tokens(net, ids: list, user: str | None, new: int) -> list:
    """Greedy tokens of torch with `user`'s coefficients loaded (None: zeros, the base model)."""
    import torch

    from edge_lorax.builder.inject import load_coeff_tensors
    from edge_lorax.formats.user import read_user

    load_coeff_tensors(net, read_user(WORK / f"{user or 'zero'}.npz").inputs())
    with torch.no_grad():
        out = net.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False)
    return out[0, len(ids):].tolist()


def session(precision: str, net, zero_user: Path) -> dict:
    """One onnxruntime-genai session, both users (and zero coefficients) registered; users alternate."""
    from edge_lorax.runtime.llm import load_llm

    llm = load_llm(WORK / precision, threads=2)
    for name in (HELD_OUT, SECOND):
        llm.add_user(name, WORK / f"{name}.npz")
    llm.add_user("base", zero_user)
    rows = []
    for i in range(2):
        for name, (texts, labels) in TASK_PROMPTS.items():
            ids = llm.encode(texts[i], choices=labels)
            got = list(llm.generate(texts[i], name, 4, choices=labels))
            ref = torch_tokens(net, ids, name, 4)[:len(got)]
            rows.append({"user": name, "prompt": texts[i], "answer": llm.decode(got).strip(),
                         "torch": llm.decode(ref).strip(), "same_tokens": got == ref[:len(got)]})
    base = []
    for prompt in BASE_PROMPTS:
        ids, got = llm.encode(prompt), list(llm.generate(prompt, "base", 16))
        ref = torch_tokens(net, ids, 'zero', 16)
        base.append({"prompt": prompt, "bundle": llm.decode(got), "torch": llm.decode(ref),
                     "agreement_pct": round(100 * float(np.mean([a == b for a, b in zip(got, ref)])), 1)})
    return {"users": rows, "base": base}


def parity(net, prompts: list) -> dict:
    """fp32 bundle prefill logits (plain onnxruntime, default user = the held-out projection) vs torch fp32."""
    import onnxruntime as ort
    import torch

    from edge_lorax.builder.inject import load_coeff_tensors
    from edge_lorax.export.llm_bundle import prefill_feeds
    from edge_lorax.formats.user import read_user

    folder = WORK / "fp32"
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    config = json.loads((folder / "genai_config.json").read_text())
    load_coeff_tensors(net, read_user(WORK / f"{HELD_OUT}.npz").inputs())
    diffs, scale = [], 0.0
    with torch.no_grad():
        for ids in prompts:
            ours = sess.run(["logits"], prefill_feeds(ids, config))[0][0]
            ref = net(torch.tensor([ids])).logits[0].numpy()
            diffs.append(float(np.abs(ours - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
    return {"prompts": len(prompts), "positions": sum(map(len, prompts)), "max_abs_diff": max(diffs), "max_abs_logit": scale}


def markdown(res: dict) -> str:
    """demo.md from demo.json."""
    par = res["parity_fp32"] or {"prompts": 0, "positions": 0, "max_abs_diff": float("nan"), "max_abs_logit": float("nan")}
    lines = ["# Gemma 3 270M end to end from the CLI (`--model gemma3-270m`)", "", *measure.stamp_md(res["stamp"]), "",
             "Subspace: `edge-lorax build` over adapters-gemma3/ without tweets-binary (K=8, mean kept); users: "
             "`edge-lorax project` of the held-out tweets-binary adapter and of spam-sms (a source); bundles: `edge-lorax "
             "export --model gemma3-270m --subspace sub --coeffs tweets-binary.npz -o P [--quantize int8|int4]`.", "",
             "## CLI steps (wall s on 2 shared cores; output bytes)", ""]
    lines += [f"- {k}: {v if v is not None else 'reused'}" + (" s" if isinstance(v, float) else "") for k, v in res["steps_s"].items()]
    lines += [f"- bundle {k}: {v:,} bytes (all files, the fp32 gradient graph for on-device fitting included)"
              for k, v in res["bytes"].items()]
    lines += ["", "## fp32 parity: prefill logits of the fp32 bundle (onnxruntime) vs torch fp32, the held-out user", "",
              f"- {par['prompts']} prompts, {par['positions']} positions: max |Δ| {par['max_abs_diff']:.2e} at max |logit| "
              f"{par['max_abs_logit']:.1f}", ""]
    for prec, sess in res["sessions"].items():
        lines += [f"## {prec}: two users on one session (alternating), greedy answers vs torch fp32", "",
                  "| user | prompt | bundle | torch fp32 | same tokens |", "|---|---|---|---|---|"]
        lines += [f"| {r['user']} | {r['prompt']} | {r['answer']} | {r['torch']} | {r['same_tokens']} |" for r in sess["users"]]
        lines += ["", "Base model (zero coefficients), 16 greedy tokens:", "",
                  "| prompt | bundle | torch fp32 | token agreement % |", "|---|---|---|---|"]
        lines += [f"| {b['prompt']!r} | {b['bundle']!r} | {b['torch']!r} | {b['agreement_pct']} |" for b in sess["base"]]
        lines.append("")
    return measure.portable("\n".join(lines))


def main():
    import torch

    from edge_lorax.formats.user import read_user, write_user
    from edge_lorax.runtime.llm import load_llm

    torch.set_num_threads(2)
    st = measure.stamp(".venv/bin/python benchmarks/llm/gemma3_demo.py", dirty_paths=("edge_lorax", "benchmarks/llm"))
    seconds = steps()
    if (OUT / "demo.json").is_file():  # a step reused from an earlier run keeps the seconds that run measured
        before = json.loads((OUT / "demo.json").read_text())["steps_s"]
        seconds = {k: before.get(k) if v is None and isinstance(before.get(k), float) else v for k, v in seconds.items()}
    made = [p for p in ("fp32", "int8", "int4") if (WORK / p).is_dir()]
    sizes = {p: sum(f.stat().st_size for f in (WORK / p).iterdir() if f.is_file()) for p in made}
    zero, user = WORK / "zero.npz", read_user(WORK / f"{HELD_OUT}.npz")  # zero coefficients: the base model
    write_user(replace(user, coefficients={k: np.zeros_like(v) for k, v in user.coefficients.items()}, meta={}), zero)
    net, _ = torch_net()
    llm = load_llm(WORK / made[0])
    prompts = [llm.encode(p) for p in BASE_PROMPTS] + [llm.encode(t, choices=lab) for t, lab in
                                                        [(ts[0], lab) for ts, lab in TASK_PROMPTS.values()]]
    result = {"steps_s": seconds, "bytes": sizes, "parity_fp32": parity(net, prompts) if "fp32" in made else None,
              "sessions": {p: session(p, net, zero) for p in made}, "stamp": measure.finish(st)}
    OUT.mkdir(exist_ok=True)
    (OUT / "demo.json").write_text(measure.portable(json.dumps(result, indent=1)) + "\n")
    (OUT / "demo.md").write_text(markdown(result))
    print(json.dumps({k: result[k] for k in ("steps_s", "bytes", "parity_fp32")}, indent=1))


if __name__ == "__main__":
    main()
