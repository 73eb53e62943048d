"""The anchor's own fp32 parity: onnxruntime-genai's plain fp32 build of SmolLM2 vs torch (no adapter), prefill logits
on the bench's chat prompts, the same measurement `run.py` makes for the ours-fp32 bundle (logits_parity). It tells
how close to torch fp32 the model builder's fp32 graph gets on its own (issue 13's bound is 1e-4).

Needs the builds `run.py` caches (run it first). Writes runs/plain_parity.json (stamped).

    .venv/bin/python benchmarks/llm/plain_parity.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402

from edge_lorax.bench import measure  # noqa: E402


def main():
    from edge_lorax.builder.models import load_causal_lm, resolve_model
    from edge_lorax.runtime.llm import load_llm

    st = measure.stamp(".venv/bin/python benchmarks/llm/plain_parity.py", dirty_paths=bench.CODE)
    net = load_causal_lm(resolve_model("smollm2")).eval()  # no adapter: what the plain build serves
    chat_ids = [load_llm(bench.CACHE / "ours-fp32").encode(c, chat=True) for c in bench.CHATS]
    result = {"stamp": measure.finish(st), "plain-fp32": bench.logits_parity(net, bench.CACHE / "plain-fp32", chat_ids)}
    out = HERE / "runs" / "plain_parity.json"
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result["plain-fp32"]))


if __name__ == "__main__":
    main()
