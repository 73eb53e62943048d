"""The decoder bundle against onnxruntime-genai's own builds of Gemma 3 270M (issue 27), side by side: run.py's
protocol pointed at `--model gemma3-270m` and the adapters-gemma3/ family, into runs-gemma3-270m-*/.

What differs from the SmolLM2 grid (run.py) and why: Gemma 3 270M is a base model without a chat template, so the
prompts are plain text and the task users answer in the plain template they were trained on; the LoRA anchor is built
by the exporter's builder entry point (export.decoder.BUILDER_MAIN with FIXED_OPTIONS: transformers 5's Gemma 3 rope
layout and full-length caches on the sliding-window layers), as the plain and ours builds are; the held-out user is
tweets-binary (the LOO's first held-out task); on two shared cores the grid is int4 and int8 (fp32 is built for the
logits parity only), prompts of 32 and 128 tokens, 64 new tokens, task accuracy on 30 test rows; the `ours` bundles
are gemma3_demo.py's CLI exports (their build time is that export's wall time). Builds are cached under ~/.cache/edge-lorax/bench-llm-gemma3-270m/.

    nice -n 5 .venv/bin/python benchmarks/llm/gemma3.py            # builds, timings, parity, report
    .venv/bin/python benchmarks/llm/gemma3.py --report-only
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import report  # noqa: E402
import run  # noqa: E402

from edge_lorax.export.decoder import BUILDER_MAIN, FIXED_OPTIONS  # noqa: E402
from edge_lorax.formats import names  # noqa: E402

PREFIX, PRECISIONS, ROUNDS = "runs-gemma3-270m", "int4,int8", 2
PROMPTS = ("The capital of France is", "Write a haiku about the sea.", "Three tips for sleeping well:",
           "'Good morning' in French is")


def point_at_gemma():
    """run.py's module settings for Gemma 3 270M and its adapter family."""
    run.MODEL, run.MODEL_ID, run.LAYERS, run.CHAT = "gemma3-270m", "google/gemma-3-270m", 18, False
    run.ADAPTERS, run.HELD_OUT = run.ROOT / "adapters-gemma3", "tweets-binary"
    run.ACCURACY_TASKS, run.ACCURACY_ROWS = ("vader:tweets-binary", "spam:sms"), 30
    run.CACHE = run.CACHE.with_name("bench-llm-gemma3-270m")
    run.LORA_BUILDER, run.LORA_FIXED = BUILDER_MAIN, FIXED_OPTIONS
    run.PROMPT_LENGTHS, run.NEW_TOKENS, run.CHATS = (32, 128), 64, PROMPTS
    run.COMMAND = ".venv/bin/python benchmarks/llm/gemma3.py"
    run._build_ours = _ours_from_demo


def _ours_from_demo(out: Path, precision: str):
    """`ours` builds are gemma3_demo.py's CLI exports (its subspace, held-out user and bundles), copied into the bench
    cache, so both reports describe the same bundles; the export's wall time is the demo's CLI step."""
    import shutil

    import gemma3_demo

    work = gemma3_demo.WORK
    if not (run.CACHE / "user.npz").is_file():
        shutil.copytree(work / "sub", run.CACHE / "subspace", dirs_exist_ok=True)
        shutil.copyfile(work / f"{run.HELD_OUT}.npz", run.CACHE / "user.npz")
    shutil.copytree(work / precision, out)
    shutil.copyfile(run.CACHE / "user.npz", out / "user.npz")
    shutil.copyfile(out / f"{run.HELD_OUT}{names.ADAPTER_SUFFIX}", out / f"user{names.ADAPTER_SUFFIX}")  # run.py's name


def add_parity(out: Path):
    """The fp32 logits parity (ours-fp32, built for it, not timed) written into results.json's `parity`."""
    from edge_lorax.runtime.llm import load_llm

    folder = run.build("ours", "fp32")
    chat_ids = [load_llm(folder).encode(c, chat=False) for c in PROMPTS]
    res = json.loads((out / "results.json").read_text())
    res["parity"] = run.logits_parity(run.injected_net(), folder, chat_ids)
    res["sizes"]["ours-fp32"] = run.serving_bytes(folder)
    res["build_s"]["ours-fp32"] = run.build_seconds(folder)
    res["verification"]["ours-fp32"] = run._manifest(folder).get("verification")
    demo = json.loads((HERE / "gemma3-demo" / "demo.json").read_text())["steps_s"]
    res["build_s"].update({f"ours-{p}": demo.get(f"export {p}") for p in ("fp32", "int8", "int4")})
    (out / "results.json").write_text(run.measure.portable(json.dumps(res, indent=1)) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    args = ap.parse_args(argv)
    point_at_gemma()
    out = HERE / "-".join([PREFIX, *PRECISIONS.split(","), *([f"r{args.rounds}"] if args.rounds != 2 else [])])
    if not args.report_only:
        run.main(["--precisions", PRECISIONS, "--rounds", str(args.rounds)], prefix=PREFIX)
        add_parity(out)
    report.main(["--runs", out.name])


if __name__ == "__main__":
    main()
