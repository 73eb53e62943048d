"""The decoder bundle against onnxruntime-genai's own builds of SmolLM2-135M-Instruct, side by side (issue 13).

Builds, once each (cached under ~/.cache/edge-lorax/bench-llm/, so an interrupted run resumes), at fp32, int8 and int4:
- plain: `onnxruntime_genai.models.builder` on the converted SmolLM2 (fused qkv, GroupQueryAttention, MatMulNBits),
  run as the exporter runs it (export.decoder.run_model_builder);
- lora: the same with `adapter_path=` one committed decoder LoRA (r=8, q/v), its A/B weights turned into optional
  inputs as Olive's ExtractAdapters does (kept fp32: the builder is told not to quantize them), so LoRA users swap
  through og.Adapters — onnxruntime-genai's multi-LoRA path;
- ours: `edge-lorax export --model smollm2` on a subspace of the eleven other decoder adapters, with the held-out
  adapter projected as the default user.

Each (build, threads) is measured in a fresh process, in alternating order over rounds, by the product's decoder
bench (edge_lorax/bench/llm.py `alternate`, edge_lorax/bench/llm_workers.py: the code `edge-lorax bench` runs on a
decoder bundle): time to first token at prompts of 32 / 128 / 512 tokens, decode tokens/s over 128 new tokens (EOS
ignored), peak RSS (VmHWM) with RssAnon / RssFile, switching a user (a preloaded adapter; registered from
.onnx_adapter; ours also from user.npz, through runtime.llm's LLM.add_user), the RSS of 1000 resident users, and
greedy tokens (4 chat prompts x 32) for the token agreement with torch. The plain builds are made by the exporter's
model builder call (export.decoder.run_model_builder), as `edge-lorax bench` makes its plain row. A torch eager row
(HF generate with its KV cache) is the reference. Results: runs/*.json, then report.py.

    .venv/bin/python benchmarks/llm/run.py            # the whole grid (about 30 min on a quiet 2-core machine)
    .venv/bin/python benchmarks/llm/run.py --quick    # smoke: fp32 only, prompt 32, 16 new tokens, 1 round
    .venv/bin/python benchmarks/llm/run.py --builder-option algo_config=k_quant_mixed --precisions int4
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from edge_lorax.bench import measure  # noqa: E402
from edge_lorax.bench.llm import LLMPlan, alternate, common_spec  # noqa: E402
from edge_lorax.bench.llm_workers import prompt_ids  # noqa: E402
from edge_lorax.formats import names  # noqa: E402

CACHE = Path(os.environ.get("EDGE_LORAX_CACHE", Path.home() / ".cache" / "edge-lorax")) / "bench-llm"
ADAPTERS = ROOT / "adapters-smollm2"
HELD_OUT = "spam-sms"
# Quantization's task accuracy change: the held-out spam user (the default) and a source inside the subspace
# (tweets-binary, projected), on the first 200 test rows (the decoder LOO's cap).
ACCURACY_TASKS, ACCURACY_ROWS = ("spam:sms", "vader:tweets-binary"), 200  # the first is HELD_OUT's task (report.py)
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL, LAYERS, CHAT = "smollm2", 30, True  # --model name, decoder layers (the LoRA build's node names), chat prompts
# The LoRA anchor's builder: the plain one for SmolLM2 (as its committed runs made it); benchmarks/llm/gemma3.py sets
# the exporter's (export.decoder.BUILDER_MAIN + FIXED_OPTIONS: Gemma 3 needs the shim and full-length caches).
LORA_BUILDER, LORA_FIXED = "onnxruntime_genai.models.builder", ()
PRECISIONS = ("fp32", "int8", "int4")
KINDS = ("plain", "lora", "ours")
PROMPT_LENGTHS, NEW_TOKENS, RESIDENT = (32, 128, 512), 128, 1000
CHATS = ("Write a haiku about the sea.", "What is the capital of France? Answer in one word.",
         "Give me three tips for sleeping well.", "Translate 'good morning' into French.")
COMMAND = ".venv/bin/python benchmarks/llm/run.py"
CODE = ("edge_lorax/export", "edge_lorax/runtime", "edge_lorax/bench", "benchmarks/llm")


# ------------------------------------------------------------------------------------------------------ builds

OPTIONS: list = []  # --builder-option values, applied to every build (anchors and ours alike)


def _builder(out: Path, precision: str, extra: list) -> Path:
    from edge_lorax.builder.models import resolve_model

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", LORA_BUILDER, "-m", MODEL_ID, "-i", str(resolve_model(MODEL)),
           "-o", str(tmp), "-p", precision, "-e", "cpu", "-c", str(tmp / ".cache")]
    extra = [*LORA_FIXED, *OPTIONS, *extra]
    subprocess.run(cmd + (["--extra_options", *extra] if extra else []), check=True, capture_output=True)
    shutil.rmtree(tmp / ".cache", ignore_errors=True)
    tmp.rename(out)
    return out


def _lora_nodes() -> list:
    """The builder's LoRA MatMul node names (kept fp32 so their weights can become inputs)."""
    return [f"/model/layers.{i}/attn/{p}_proj/lora_{s}/MatMul" for i in range(LAYERS) for p in ("q", "v") for s in "AB"]


def lora_as_inputs(folder: Path) -> dict:
    """The LoRA A/B initializers of a builder graph become optional inputs (input + same-name default), as Olive's
    ExtractAdapters does; the model is rewritten in place; returns {name: array} (the LoRA user's feeds)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / names.BUNDLE_MODEL))
    feeds = {}
    for init in model.graph.initializer:
        if ".lora_A." in init.name or ".lora_B." in init.name:
            feeds[init.name] = numpy_helper.to_array(init)
            model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    data = folder / (names.BUNDLE_MODEL + names.EXTERNAL_DATA_SUFFIX)
    data.unlink()  # onnx appends to an existing external-data file: the weights would be stored twice
    onnx.save_model(model, str(folder / names.BUNDLE_MODEL), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name)
    return feeds


def build(kind: str, precision: str) -> Path:
    """The cached build folder (made when missing); its users: user.onnx_adapter (+ user.npz for ours)."""
    from edge_lorax.formats.onnx_adapter import write_onnx_adapter

    out = CACHE / "-".join([kind, precision, *(o.replace("=", "_") for o in OPTIONS)])
    if (out / "done").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if kind == "plain":  # as `edge-lorax bench` makes its plain row (edge_lorax.bench.llm.plain_build)
        from edge_lorax.builder.models import resolve_model
        from edge_lorax.export.decoder import run_model_builder

        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        run_model_builder(resolve_model(MODEL), tmp, precision, MODEL_ID, tuple(OPTIONS))
        shutil.rmtree(tmp / ".builder_cache", ignore_errors=True)
        tmp.rename(out)
    elif kind == "lora":
        _builder(out, precision, [f"adapter_path={ADAPTERS / HELD_OUT}", "nodes_to_exclude=" + ",".join(_lora_nodes())])
        write_onnx_adapter(lora_as_inputs(out), out / "user.onnx_adapter")
    else:
        _build_ours(out, precision)
    (out / "done").write_text(json.dumps({"build_s": round(time.perf_counter() - start, 1)}) + "\n")
    return out


def serving_bytes(folder: Path) -> int:
    """Bytes of a build's files a serving app ships: all but the decoder bundle's gradient graph (model.grad.onnx and
    its data, used only to fit users on the device)."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and not f.name.startswith(names.BUNDLE_MODEL_GRADIENT))


def build_seconds(folder: Path) -> float | None:
    """Wall time of the build that made the cached folder (None for a folder cached before times were kept)."""
    try:
        return json.loads((folder / "done").read_text())["build_s"]
    except (ValueError, KeyError, TypeError):
        return None


def _build_ours(out: Path, precision: str):
    from edge_lorax.builder.project import project_adapter
    from edge_lorax.builder.subspace import build_subspace
    from edge_lorax.export import ExportConfig, export_bundle
    from edge_lorax.formats.subspace import write_subspace
    from edge_lorax.formats.user import write_user

    sub_dir, user = CACHE / "subspace", CACHE / "user.npz"
    if not user.is_file():
        sources = sorted(p for p in ADAPTERS.glob("*") if (p / names.ADAPTER_CONFIG).is_file() and p.name != HELD_OUT)
        sub = build_subspace(sources, components=8, mean="keep", seed=0)
        write_subspace(sub, sub_dir, overwrite=True)
        write_user(project_adapter(sub, ADAPTERS / HELD_OUT).coeffs, user)
    config = ExportConfig(quantize=None if precision == "fp32" else precision, overwrite=True,
                          builder_options=tuple(OPTIONS))
    export_bundle(MODEL, sub_dir, out, user, config)
    shutil.copyfile(user, out / "user.npz")  # the export wrote user.onnx_adapter beside the model


# --------------------------------------------------------------------------------------------------- orchestrate

def injected_net():
    """The torch reference of the `ours` builds: SmolLM2 with the bench subspace injected, the default user's
    coefficients loaded, in eval mode (loaded once; torch_reference, logits_parity and torch_accuracy share it)."""
    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_causal_lm, resolve_model
    from edge_lorax.formats.subspace import read_subspace
    from edge_lorax.formats.user import read_user

    net = load_causal_lm(resolve_model(MODEL)).eval()
    inject_subspace(net, read_subspace(CACHE / "subspace"), coeffs=read_user(CACHE / "user.npz").inputs())
    return net


def torch_reference(net, quick: bool, chat_ids: list, bundle: Path) -> dict:
    """HF eager generate (KV cache), one thread: TTFT per prompt length, decode tokens/s, greedy chat tokens (the
    projected user injected, as the `ours` bundles serve it)."""
    import torch

    torch.set_num_threads(1)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / names.TOKENIZER_FILE))
    reps, lengths, new = (2, (32,), 16) if quick else (3, PROMPT_LENGTHS, NEW_TOKENS)
    out = {"ttft_ms": {}, "greedy": []}
    with torch.no_grad():
        for n in lengths:
            ids = torch.tensor([prompt_ids(tok, n)])
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                net(ids, use_cache=True)
                times.append(time.perf_counter() - start)
            out["ttft_ms"][str(n)] = round(float(np.median(times)) * 1e3, 3)
        ids = torch.tensor([prompt_ids(tok, 32)])
        start = time.perf_counter()
        net.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        out["decode_tokens_per_s_incl_prefill"] = round(new / (time.perf_counter() - start), 2)
        for ids in chat_ids:
            seq = net.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
            out["greedy"].append(seq[0, len(ids):].tolist())
    return out


def _task_split(spec: str, rows: int) -> tuple:
    """(task, its first test rows) (the decoder LOO's split and cap)."""
    from edge_lorax.builder.data import Split, load_task

    task = load_task(spec, seed=0)
    return task, Split(task.test.texts[:rows], task.test.targets[:rows])


def accuracy_user(spec: str) -> Path:
    """The user file that answers `spec`: the task's committed adapter projected onto the bench subspace (for the
    held-out spam adapter that is the bundles' default user; tweets-binary is one of the eleven sources)."""
    from edge_lorax.builder.project import project_adapter
    from edge_lorax.formats.subspace import read_subspace
    from edge_lorax.formats.user import write_user

    family, name = spec.split(":")
    folder = name if family == "vader" else f"{family}-{name}"
    path = CACHE / f"user-{folder}.npz"
    if not path.is_file():
        write_user(project_adapter(read_subspace(CACHE / "subspace"), ADAPTERS / folder).coeffs, path)
    return path


def _exact_match(answers: list, task, split) -> dict:
    hits = [a == task.labels[int(t)] for a, t in zip(answers, split.targets)]
    return {"rows": len(hits), "exact_match": round(100 * float(np.mean(hits)), 2),
            "majority": round(100 * float(np.bincount(np.asarray(split.targets)).max() / len(hits)), 2),
            "answers": answers}


def _ask(llm, text: str, labels, user):
    """The greedy answer (8 tokens at most) in the format the users were trained on: the chat turn (instruction)
    for a chat model, the plain template for a model without one (CHAT False)."""
    from edge_lorax.builder.generative import instruction

    if CHAT:
        return llm.generate(instruction(text, labels), user, 8, chat=True)
    return llm.generate(text, user, 8, choices=labels)


def task_accuracy(folder: Path, rows: int) -> dict:
    """Exact match (%) of the greedy chat answer with the label word on each ACCURACY task's test rows, served by
    the runtime (runtime.llm, 2 threads) with that task's user registered on the bundle."""
    from edge_lorax.runtime.llm import load_llm

    llm, out = load_llm(folder, threads=2), {}
    for spec in ACCURACY_TASKS:
        task, split = _task_split(spec, rows)
        user = llm.add_user(spec, accuracy_user(spec))
        out[spec] = _exact_match([llm.decode(list(_ask(llm, t, task.labels, user))).strip() for t in split.texts],
                                 task, split)
    return out


def torch_accuracy(net, rows: int) -> dict:
    """task_accuracy's figures from torch (each task's user loaded into `net`; HF generate, greedy, batches of 8)."""
    from edge_lorax.builder.generative import Generation
    from edge_lorax.builder.inject import load_coeff_tensors
    from edge_lorax.builder.models import load_tokenizer, resolve_model
    from edge_lorax.formats.user import read_user

    tok, out = load_tokenizer(resolve_model(MODEL)), {}
    for spec in ACCURACY_TASKS:
        task, split = _task_split(spec, rows)
        objective = Generation(task, tok, 512)
        load_coeff_tensors(net, read_user(accuracy_user(spec)).inputs())
        out[spec] = _exact_match(objective.answers_of(net, objective.encode(split), batch_size=8), task, split)
    return out


def logits_parity(net, folder: Path, chat_ids: list) -> dict:
    """Prefill logits of the fp32 bundle (plain onnxruntime, its default user) vs torch with that user injected, on
    the chat prompts: max |Δ| against torch fp32, and torch fp32 vs torch fp64 (the reference's own rounding); `net`
    is returned to float32 (exact: its weights are float32 values)."""
    import onnxruntime as ort
    import torch

    from edge_lorax.export.llm_bundle import prefill_feeds

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(folder / names.BUNDLE_MODEL), options, providers=["CPUExecutionProvider"])
    config = json.loads((folder / "genai_config.json").read_text())
    ours = [sess.run(["logits"], prefill_feeds(ids, config))[0][0] for ids in chat_ids]  # (T, vocab) each
    with torch.no_grad():
        ref = [net(torch.tensor([ids])).logits[0].numpy() for ids in chat_ids]
        net.double()
        ref64 = [net(torch.tensor([ids])).logits[0].numpy() for ids in chat_ids]
        net.float()
    return {"prompts": len(chat_ids), "positions": sum(len(i) for i in chat_ids),
            "max_abs_diff_vs_torch_fp32": float(max(np.abs(a - b).max() for a, b in zip(ours, ref))),
            "max_abs_diff_vs_torch_fp64": float(max(np.abs(a - b).max() for a, b in zip(ours, ref64))),
            "torch_fp32_vs_fp64": float(max(np.abs(a - b).max() for a, b in zip(ref, ref64))),
            "max_abs_logit": float(max(np.abs(b).max() for b in ref))}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / names.BUNDLE_MANIFEST).read_text())


def plan_of(quick: bool, rounds: int) -> LLMPlan:
    """The product's decoder-bench plan for this grid (quick: fp32 smoke sizes, one round)."""
    if quick:
        return LLMPlan(prompt_tokens=(32,), threads=(1,), new_tokens=16, users=20, rounds=1, reps=2, switch_reps=20)
    return LLMPlan(prompt_tokens=PROMPT_LENGTHS, threads=(1, 2), new_tokens=NEW_TOKENS, users=RESIDENT, rounds=rounds,
                   reps=5, switch_reps=200)


def measure_builds(folders: dict, plan: LLMPlan, chat_ids: list) -> dict:
    """{f"{build}_t{threads}": per-round results} by the product's decoder bench (fresh process each, alternating);
    ours through the runtime (LLM.add_user), lora through og.Adapters; a failed worker stops the run."""
    builds = {}
    for name, folder in folders.items():
        adapter, npz = folder / "user.onnx_adapter", folder / "user.npz"
        builds[name] = {"folder": str(folder), "bundle": name.startswith("ours"),
                        **({"user": str(adapter), "adapter_file": str(adapter)} if adapter.is_file() else {}),
                        **({"npz_file": str(npz)} if npz.is_file() else {})}
    ours = next(p for n, p in folders.items() if n.startswith("ours"))
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    runs = alternate(builds, plan, common_spec(ours, plan, chat_ids), log, extras_threads=1)
    failed = [f"{k}: {r['error']}" for k, rs in runs.items() for r in rs if "error" in r]
    if failed:
        raise RuntimeError("worker failed: " + " | ".join(failed)[:1500])
    return runs


def main(argv=None, prefix: str = "runs"):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds over the builds (fresh process each)")
    ap.add_argument("--builder-option", action="append", default=[], metavar="KEY=VALUE",
                    help="model builder extra option for every build, e.g. algo_config=k_quant_mixed (runs go to "
                         "runs-<options>/)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated subset of fp32,int8,int4")
    args = ap.parse_args(argv)
    OPTIONS[:] = args.builder_option
    precisions = ("fp32",) if args.quick else tuple(args.precisions.split(","))
    subset = [] if precisions == PRECISIONS else list(precisions)
    out = HERE / (f"{prefix}_quick" if args.quick else "-".join([prefix, *(o.replace("=", "_") for o in OPTIONS), *subset,
                                                             *([f"r{args.rounds}"] if args.rounds != 2 else [])]))
    out.mkdir(exist_ok=True)
    st = measure.stamp(" ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]), dirty_paths=CODE)
    folders = {f"{k}-{p}": build(k, p) for p in precisions for k in KINDS}
    st["builder_options"] = OPTIONS
    print(f"builds ready: {sorted(folders)}", file=sys.stderr)
    from edge_lorax.runtime.llm import load_llm

    ours = next(p for n, p in folders.items() if n.startswith("ours"))
    chat_ids = [load_llm(ours).encode(c, chat=CHAT) for c in CHATS]
    runs = measure_builds(folders, plan_of(args.quick, args.rounds), chat_ids)
    (out / "runs.partial.json").write_text(json.dumps(runs))  # the timings, kept should a later stage fail
    rows = 16 if args.quick else ACCURACY_ROWS
    st["model"] = MODEL_ID
    net = injected_net()
    result = {"stamp": measure.finish(st), "runs": runs, "torch": torch_reference(net, args.quick, chat_ids, ours),
              "sizes": {n: serving_bytes(p) for n, p in folders.items()},
              "build_s": {n: build_seconds(p) for n, p in folders.items()},
              "verification": {n: _manifest(p).get("verification") for n, p in folders.items() if n.startswith("ours")},
              "parity": logits_parity(net, folders["ours-fp32"], chat_ids) if "ours-fp32" in folders else None,
              "accuracy": {**{n: task_accuracy(p, rows) for n, p in folders.items() if n.startswith("ours")},
                           "torch": torch_accuracy(net, rows)},
              "quick": args.quick}
    (out / "results.json").write_text(measure.portable(json.dumps(result, indent=1)) + "\n")
    (out / "runs.partial.json").unlink()
    print(f"wrote {out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
