"""`edge-lorax bench` on a decoder bundle (manifest target `genai-decoder`): time to first token and decode tokens/s
at the prompt lengths and thread counts asked for, switch cost, resident users' memory, against onnxruntime-genai's
own plain build of the same base model, written as a stamped report (JSON + Markdown + PNG, bench/llm_report.py).

The protocol of benchmarks/llm (which calls this module): the plain build is made by the model builder the
exporter runs (export.decoder.run_model_builder) from the bundle's base model, at the bundle's precision and
builder options; where no model folder is given or resolvable, or the builder fails, the report has no plain row and
says why. Each (build, threads) is measured in a fresh process (bench/llm_workers.py through bench/workers.py), the
builds in alternating order over rounds, never two at once (they would share cores). Every build reads the same
token ids (the bundle's tokenizer), so they differ only in the graph. The bench user is --coeffs (checked by the
runtime's own LLM.add_user), else a seeded random user of the bundle's shapes: values do not change the timings.
Does not judge or draw (llm_report.py does).
"""

import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edge_lorax.bench import measure
from edge_lorax.formats import names
from edge_lorax.formats.bundle import TARGET_DECODER, read_manifest, user_input_shapes
from edge_lorax.formats.errors import InputError

OURS, PLAIN = "ours", "plain"  # the bundle; onnxruntime-genai's plain build of its base model


@dataclass(frozen=True)
class LLMPlan:
    """What a decoder bench measures. reps: fresh generators per timing, medians; rounds: fresh processes per
    (build, threads), alternating; users: resident users whose memory is measured."""

    prompt_tokens: tuple = (32, 128, 512)
    threads: tuple = (1, 2)
    new_tokens: int = 128
    users: int = 1000
    rounds: int = 3
    reps: int = 5
    switch_reps: int = 200
    timeout_s: int = 900


QUICK = LLMPlan(prompt_tokens=(32,), threads=(1,), new_tokens=16, users=20, rounds=1, reps=2, switch_reps=20,
                timeout_s=300)


def _ints(values, option: str, low: int) -> tuple:
    """A tuple of whole numbers ≥ low, each once, in the order given (InputError naming the option otherwise)."""
    out = tuple(values)
    if not out or any(type(v) is not int or v < low for v in out) or len(set(out)) != len(out):
        raise InputError(f"{option} {','.join(map(str, values))}: give whole numbers >= {low}, comma-separated, "
                         "each once")
    return out


def make_plan(manifest: dict, quick: bool = False, prompt_tokens=None, threads=None, new_tokens=None, users=None,
              rounds=None) -> tuple:
    """(LLMPlan, notes): the quick or full defaults with the options given, checked against the bundle's context and
    this machine's cores. A default that does not fit is fitted (and noted); an option that does not fit is refused
    in one line naming it."""
    from edge_lorax.runtime.bundle import usable_cores

    base, notes = (QUICK if quick else LLMPlan()), []
    context, cores = int(manifest["kv"]["context_length"]), usable_cores()
    if threads is None:
        threads = tuple(t for t in base.threads if t <= cores)
    threads = _ints(threads, "--threads", 1)
    if max(threads) > cores:
        raise InputError(f"--threads {','.join(map(str, threads))}: this machine has {cores} usable cores; give 1 to "
                         f"{cores}")
    new = _ints([new_tokens], "--new-tokens", 2)[0] if new_tokens is not None else None
    if prompt_tokens is None:
        fits = tuple(n for n in base.prompt_tokens if n < context) or (max(1, context // 2),)
        if fits != base.prompt_tokens:
            notes.append(f"prompt lengths {list(fits)}: the default {list(base.prompt_tokens)} do not fit the "
                         f"bundle's context of {context} tokens")
        prompt_tokens = fits
    else:
        prompt_tokens = tuple(sorted(_ints(prompt_tokens, "--prompt-tokens", 1)))
        if max(prompt_tokens) >= context:
            raise InputError(f"--prompt-tokens {max(prompt_tokens)}: the bundle's context is {context} tokens; give "
                             f"lengths below {context}")
    if new is None:
        new = min(base.new_tokens, context - min(prompt_tokens))
        if new != base.new_tokens:
            notes.append(f"{new} new tokens: the default {base.new_tokens} after a {min(prompt_tokens)}-token prompt "
                         f"does not fit the context of {context}")
        if new < 2:
            raise InputError(f"a {min(prompt_tokens)}-token prompt leaves {context - min(prompt_tokens)} of the "
                             f"context's {context} tokens; give a shorter --prompt-tokens")
    elif min(prompt_tokens) + new > context:
        raise InputError(f"--new-tokens {new} after a {min(prompt_tokens)}-token prompt exceeds the bundle's context of "
                         f"{context} tokens; give at most {context - min(prompt_tokens)}")
    users = base.users if users is None else _ints([users], "--users", 1)[0]
    rounds = base.rounds if rounds is None else _ints([rounds], "rounds", 1)[0]
    return replace(base, prompt_tokens=prompt_tokens, threads=threads, new_tokens=new, users=users, rounds=rounds), notes


def _graph_arrays(manifest: dict, arrays: dict) -> dict:
    """One user's (r, K) / (K, r) arrays as the graph takes them ((1, r, K) in a per-example bundle)."""
    if manifest["mode"] != names.MODE_PER_EXAMPLE:
        return arrays
    return {k: v[None] if v.ndim == 2 else v for k, v in arrays.items()}


def bench_user(bundle: Path, manifest: dict, coeffs, work: Path) -> dict:
    """The bench user: {"user": the file registered in every timing, "adapter_file": its .onnx_adapter (the
    preloaded and resident users), "npz_file": a user.npz or None, "source"}. --coeffs is checked by the runtime
    (LLM.add_user: fingerprint, names, shapes, values), refused in its one line; without it a seeded random user of
    the bundle's shapes."""
    from edge_lorax.formats.onnx_adapter import write_onnx_adapter
    from edge_lorax.formats.synthetic import random_user
    from edge_lorax.formats.user import read_user, write_user

    if coeffs is None:
        shapes = user_input_shapes(manifest)
        user = random_user(shapes, manifest["fingerprint"], 0, scale=0.1, meta={"name": "bench-user"})
        npz = write_user(user, work / "bench-user.npz")
        source = "a seeded random user of the bundle's shapes (values do not change the timings)"
    else:
        from edge_lorax.runtime.llm import load_llm

        coeffs = Path(coeffs)
        load_llm(bundle, 1).add_user("bench", coeffs)  # the runtime's check, its refusal
        if coeffs.suffix == names.ADAPTER_SUFFIX:
            return {"user": str(coeffs), "adapter_file": str(coeffs), "npz_file": None, "source": f"--coeffs {coeffs}"}
        npz, user, source = coeffs, read_user(coeffs), f"--coeffs {coeffs}"
    adapter = write_onnx_adapter(_graph_arrays(manifest, user.inputs()), work / f"bench-user{names.ADAPTER_SUFFIX}",
                                 manifest["fingerprint"])
    return {"user": str(npz), "adapter_file": str(adapter), "npz_file": str(npz), "source": source}


def plain_build(bundle: Path, manifest: dict, model, work: Path, notes: list, log=None) -> tuple:
    """(folder or None, build seconds or None): onnxruntime-genai's plain build of the bundle's base model at its
    precision and builder options. --model given: refused in one line unless it is the model the bundle was exported
    from. Not given: the manifest's base_model where it resolves (an embedded model, a local folder), else None and
    a note saying why; a failed build is a note too."""
    from edge_lorax.builder.models import portable_model_id, resolve_model
    from edge_lorax.export.decoder import run_model_builder

    base = manifest.get("base_model")
    if model is None and not base:
        notes.append("no plain row: the bundle's manifest names no base_model; pass --model DIR (the model folder it "
                     "was exported from)")
        return None, None
    try:
        model_dir = resolve_model(model if model is not None else base)
    except InputError:
        if model is not None:
            raise
        notes.append(f"no plain row: the bundle's base model {base!r} is neither an embedded model nor a model folder "
                     "here; pass --model DIR (the folder it was exported from) for onnxruntime-genai's plain build")
        return None, None
    if base and portable_model_id(model_dir) != base:
        raise InputError(f"--model {model}: that is {portable_model_id(model_dir)!r}, but {bundle} was exported from "
                         f"{base!r}; pass the folder of the model the bundle was exported from")
    precision = manifest.get("precision", "fp32")
    options = tuple(manifest.get("builder_options") or ())
    if log:
        log(f"building onnxruntime-genai's plain {precision} build of {base or model_dir} (the model builder)")
    start = time.perf_counter()
    try:
        out = run_model_builder(Path(model_dir), work / "plain", precision, portable_model_id(model_dir), options)
    except InputError as e:
        notes.append(f"no plain row: onnxruntime-genai's model builder could not build {model_dir} "
                     f"({' '.join(str(e).split())[:300]})")
        return None, None
    return out, round(time.perf_counter() - start, 1)


def alternate(builds: dict, plan: LLMPlan, common: dict, log=None, extras_threads: int | None = None) -> dict:
    """{f"{name}_t{threads}": one result per round}: each (round, threads, build) a fresh worker process (the
    `decoder` kind), the builds in the given order on even rounds and reversed on odd ones; the switch, resident and
    greedy stages run at `extras_threads` (default: the first thread count). A failed worker is its {"error"} row."""
    from edge_lorax.bench.run import spawn

    extras_threads = plan.threads[0] if extras_threads is None else extras_threads
    runs = {}
    for rnd in range(plan.rounds):
        order = list(builds.items()) if rnd % 2 == 0 else list(reversed(builds.items()))
        for threads in plan.threads:
            for name, build in order:
                spec = {"kind": "decoder", **common, **build, "threads": threads, "extras": threads == extras_threads}
                res = spawn(spec, plan.timeout_s)
                runs.setdefault(f"{name}_t{threads}", []).append(res)
                if log:
                    log(f"round {rnd} {name} t={threads}: " + (res["error"] if "error" in res else
                        f"TTFT {res['ttft_ms']} ms, decode {res['decode_tokens_per_s']} tokens/s"))
    return runs


def common_spec(bundle: Path, plan: LLMPlan, chat_ids=None) -> dict:
    """The worker spec every build shares: the same token ids (the bundle's tokenizer) for every prompt length and the
    decode prompt (the shortest), new tokens, repetitions, switch repetitions, resident users."""
    from edge_lorax.bench.llm_workers import prompt_ids
    from edge_lorax.runtime.tokens import load_tokenizer

    tok = load_tokenizer(bundle)
    prompts = {str(n): prompt_ids(tok, n) for n in plan.prompt_tokens}
    return {"prompts": prompts, "decode_ids": prompts[str(min(plan.prompt_tokens))], "new_tokens": plan.new_tokens,
            "reps": plan.reps, "switch_reps": plan.switch_reps, "resident": plan.users,
            **({"chat_ids": chat_ids} if chat_ids else {})}


def run_llm_bench(bundle_dir, out_dir, quick: bool = False, model=None, coeffs=None, prompt_tokens=None,
                  threads=None, new_tokens=None, users=None, rounds=None, command: str = "", log=None) -> Path:
    """Measure the decoder bundle against onnxruntime-genai's plain build and write report.json, report.md and
    report.png into out_dir; returns out_dir. InputError (one line) for a bundle that is not a decoder bundle, an
    option that does not fit it or this machine, a --coeffs user of another bundle, a --model of another model."""
    from edge_lorax.bench.llm_report import write_llm_report

    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    if manifest["target"] != TARGET_DECODER:
        raise InputError(f"{bundle}: a {manifest['target']} bundle; this bench measures {TARGET_DECODER} bundles")
    plan, notes = make_plan(manifest, quick, prompt_tokens, threads, new_tokens, users, rounds)
    data = {"kind": TARGET_DECODER, "stamp": measure.stamp(command or " ".join(sys.argv)), "quick": quick,
            "bundle": str(bundle), "base_model": manifest.get("base_model"),
            "precision": manifest.get("precision", "fp32"), "plan": asdict(plan), "notes": notes}
    with tempfile.TemporaryDirectory(prefix="edge-lorax-bench-llm-") as tmp:
        work = Path(tmp)
        user = bench_user(bundle, manifest, coeffs, work)
        plain, build_s = plain_build(bundle, manifest, model, work, notes, log)
        data["user"] = {"source": user["source"], "bytes_per_user_file": Path(user["adapter_file"]).stat().st_size}
        data["plain_build_s"] = build_s
        builds = {OURS: {"folder": str(bundle), "bundle": True,
                        **{k: user[k] for k in ("user", "adapter_file", "npz_file")}}}
        if plain is not None:
            builds[PLAIN] = {"folder": str(plain), "bundle": False}
        data["builds"] = {k: {"folder": v["folder"] if k == OURS else "onnxruntime-genai model builder output (temporary)"}
                          for k, v in builds.items()}
        data["runs"] = alternate(builds, plan, common_spec(bundle, plan), log)
    data["stamp"] = measure.finish(data["stamp"])
    return write_llm_report(data, Path(out_dir))
