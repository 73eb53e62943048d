"""Measure the exporter on the real MiniLM and write benchmarks/export_report.md: bundle sizes (fp32, int8, .ort),
one user's coefficients vs the same user's LoRA adapter in bytes, and wall time of each `edge-lorax export` run.

Usage: python benchmarks/export_report.py [--adapters DIR ... | --random] [--work DIR] [--out benchmarks/export_report.md]
Without --adapters it uses the nine committed tweets / movies / Amazon source adapters (the demo's subspace); --random
makes 4 random PEFT LoRA adapters of the same shape instead. Each CLI command runs in its own process; times are one
run each.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_lorax.bench import measure  # noqa: E402

SOURCES = [ROOT / "adapters" / f"{d}-{t}" for d in ("tweets", "movies", "amazon") for t in ("binary", "3class", "regression")]
CLI = [str(Path(sys.executable).parent / "edge-lorax")]  # the console script of this interpreter's environment


def make_adapters(root: Path, n: int = 4) -> list:
    """n random PEFT LoRA adapters on the MiniLM, saved like the VADER ones (classifier in modules_to_save)."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from edge_lorax.builder.models import default_model_path

    transformers.logging.set_verbosity_error()
    out = []
    for i in range(n):
        torch.manual_seed(i)
        model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS",
                            init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(root / f"adapter{i}")
        out.append(root / f"adapter{i}")
    return out


PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def timed(cmd: list, work: Path) -> dict:
    """Run one CLI command in a fresh process (under a fresh parent, so its peak RSS is its own): seconds, MiB."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    shown = shlex.join(["edge-lorax", *cmd[len(CLI):]]).replace(str(work), "$W").replace(f"{ROOT}/", "")
    return {"command": shown, "seconds": round(wall, 1), "peak_rss_mib": round(int(out.split()[-1]) / 1024)}


def sizes(bundle: Path) -> dict:
    return {f.name: f.stat().st_size for f in sorted(bundle.iterdir()) if f.is_file()}


def run(adapters: list, work: Path) -> dict:
    sub, user = work / "subspace", work / "user.npz"
    runs = [timed([*CLI, "build", *map(str, adapters), "-o", str(sub), "-k", "8", "--overwrite"], work),
            timed([*CLI, "project", str(sub), str(adapters[0]), "-o", str(user), "--overwrite"], work)]  # + its head
    base = [*CLI, "export", "--subspace", str(sub), "--coeffs", str(user), "--overwrite"]
    variants = {"shared": [], "int8+ort": ["--quantize", "int8", "--ort-format"], "per-example": ["--per-example"],
                "merged": ["--merge"], "features": ["--task", "features"]}
    bundles = {}
    for name, extra in variants.items():
        bundles[name] = work / f"bundle-{name}"
        runs.append(timed([*base, "-o", str(bundles[name]), *extra], work))
    return {"runs": runs, "bundles": {k: sizes(v) for k, v in bundles.items()}, "user": user_bytes(user, adapters[0], sub, work),
            "manifest": json.loads((bundles["int8+ort"] / "manifest.json").read_text())}


def user_bytes(user: Path, adapter: Path, sub: Path, work: Path) -> dict:
    """One user, every way it can be stored."""
    from safetensors.numpy import load_file

    from edge_lorax.formats import names
    from edge_lorax.formats.user import read_user

    rec = work / "user-lora"
    subprocess.run([*CLI, "reconstruct", str(sub), str(user), "-o", str(rec), "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lora = load_file(str(adapter / names.ADAPTER_WEIGHTS))
    c = read_user(user)
    return {"user.npz file": user.stat().st_size,
            "coefficient tensors (no head)": sum(v.nbytes for v in c.coefficients.values()),
            "coefficient + head tensors": c.nbytes(),
            "user.onnx_adapter file": (work / "bundle-shared" / "user.onnx_adapter").stat().st_size,
            "source PEFT adapter_model.safetensors (LoRA + classifier)": (adapter / names.ADAPTER_WEIGHTS).stat().st_size,
            "source LoRA A/B tensors (no head)": sum(v.nbytes for k, v in lora.items() if ".lora_" in k),
            "reconstructed PEFT adapter_model.safetensors": (rec / names.ADAPTER_WEIGHTS).stat().st_size}


def int8_agreement(bundle_dir: Path, user: Path, task_spec: str) -> dict:
    """fp32 vs int8 on the user's own task, whole test split (max length 64): accuracy of each, and how many
    predictions the int8 graph changes — what the exporter's logit tolerance does not say."""
    from dataclasses import replace

    from edge_lorax.builder.data import load_task
    from edge_lorax.formats import names
    from edge_lorax.runtime.bundle import PROFILES, open_bundle
    from edge_lorax.runtime.infer import encode, run_arrays
    from edge_lorax.runtime.users import load_user

    test, preds = load_task(task_spec, seed=0).test, {}
    for variant in ("fp32", "int8"):
        bundle = open_bundle(bundle_dir, replace(PROFILES["default"], variant=variant))
        logits = run_arrays(bundle, load_user(bundle, user), encode(bundle, list(test.texts), 64))[names.LOGITS]
        preds[variant] = logits.argmax(-1)  # (rows,)
    acc = {v: round(float((p == test.targets).mean()), 4) for v, p in preds.items()}
    return {"task": task_spec, "rows": len(test), "accuracy": acc,
            "changed_predictions": int((preds["fp32"] != preds["int8"]).sum())}


def summary(result: dict) -> str:
    """The closing-note numbers: int8 vs fp32, the coefficient graph's cost over merged, one user vs its LoRA."""
    b, u = result["bundles"], result["user"]
    fp32, int8, merged = b["shared"]["model.onnx"], b["int8+ort"]["model.int8.onnx"], b["merged"]["model.onnx"]
    lora, coeff = u["source LoRA A/B tensors (no head)"], u["coefficient tensors (no head)"]
    whole, npz = u["source PEFT adapter_model.safetensors (LoRA + classifier)"], u["user.npz file"]
    return (f"Summary: model.int8.onnx is {int8 / fp32:.1%} of model.onnx ({int8:,} vs {fp32:,} bytes). The "
            f"coefficient graph is {fp32 - merged:,} bytes larger than the merged one (components stored once, plus "
            f"the default user and head). One user: {coeff:,} bytes of coefficients vs {lora:,} bytes of LoRA A/B "
            f"({lora / coeff:.0f}x); as files, user.npz {npz:,} bytes vs the PEFT adapter {whole:,} bytes "
            f"({whole / npz:.0f}x), both with the 2-label head.")


VERSIONS = ("torch", "transformers", "onnx", "onnxruntime", "peft", "edge-lorax")


def markdown(result: dict, adapters_note: str, work: Path) -> str:
    lines = ["# Exporter measurements (real MiniLM, all-MiniLM-L6-v2)", "", *measure.stamp_md(result["stamp"]), "",
             f"`$W` below is the work folder `{work}`; one run per command, times are indicative. {adapters_note}", "",
             "## Commands: wall time and peak RSS (one fresh process each)", "", "| command | s | peak RSS MiB |",
             "|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['seconds']} | {r['peak_rss_mib']} |" for r in result["runs"]]
    lines += ["", "Each export includes loading the model twice at most, tracing, the ONNX checker, int8 / .ort "
              "conversion when asked, and the ORT-vs-torch parity checks of every file it writes.", "",
              "## Bundle sizes (bytes)", "", "| bundle | model files | whole folder |", "|---|---|---|"]
    for name, files in result["bundles"].items():
        models = ", ".join(f"{k} {v:,}" for k, v in files.items() if k.endswith((".onnx", ".ort", ".data")))
        lines.append(f"| {name} | {models} | {sum(files.values()):,} |")
    lines += ["", summary(result), "", "## One user (bytes)", "", "| form | bytes |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in result["user"].items()]
    if result.get("int8_agreement"):
        a = result["int8_agreement"]
        lines += ["", f"## int8 vs fp32 on the user's task ({a['task']}, {a['rows']} test rows)", "",
                  f"Test accuracy fp32 {a['accuracy']['fp32']:.4f}, int8 {a['accuracy']['int8']:.4f}; int8 changes "
                  f"{a['changed_predictions']} of {a['rows']} predictions."]
    ver = result["manifest"]["verification"]
    lines += ["", "## Verification recorded in the int8+ort manifest", "", "| variant | max abs diff | tolerance x scale | response |",
              "|---|---|---|---|"]
    lines += [f"| {v} | {c['max_abs_diff']:.3g} | {c['tolerance']} x {c['scale']:.3g} | {c['response']:.4f} |" for v, c in ver.items()]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", nargs="*", type=Path, help="PEFT LoRA folders (default: the nine committed sources)")
    ap.add_argument("--random", action="store_true", help="4 random PEFT LoRA adapters instead")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edge-lorax-export-bench"))
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    adapters = make_adapters(args.work / "adapters") if args.random else args.adapters or SOURCES
    note = ("Adapters: 4 random PEFT LoRA (r=8, alpha=16, query/value + 2-label classifier, init_lora_weights=False)."
            if args.random else "Adapters: " + ", ".join(a.name for a in adapters) + "; the user is the projection of "
            f"{adapters[0].name} with its head.")
    command = shlex.join([".venv/bin/python", "benchmarks/export_report.py", *sys.argv[1:]])
    result = {"stamp": measure.stamp(command, VERSIONS), **run(adapters, args.work)}
    if not args.random and adapters[0].name.startswith(("tweets-", "movies-", "amazon-", "nyt-")):
        task = f"vader:{adapters[0].name}"
        result["int8_agreement"] = int8_agreement(args.work / "bundle-int8+ort", args.work / "user.npz", task)
    result["stamp"] = measure.finish(result["stamp"])
    args.out.write_text(measure.portable(markdown(result, note, args.work)))
    (args.work / "export_report.json").write_text(json.dumps(result, indent=1, default=str))
    print(args.out)


if __name__ == "__main__":
    main()
