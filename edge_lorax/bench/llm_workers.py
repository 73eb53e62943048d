"""One decoder measurement per fresh process (the `decoder` kind of `python -m edge_lorax.bench.workers`): a model
folder loaded by onnxruntime-genai on N threads, then time to first token per prompt, decode tokens/s, memory and,
when asked, user switches and resident users' memory.

The same code times every build, whatever made it: a decoder bundle (`bundle`: loaded by the runtime,
edge_lorax.runtime.llm, and its users registered by `LLM.add_user`, the product's one user path) and
onnxruntime-genai's own builds (plain; benchmarks/llm's multi-LoRA build, users loaded by `og.Adapters.load`).
Both are loaded with the same session options (intra-op threads, errors-only logging) and run through the same
og.Generator calls, so they differ only in the graph. Token ids come from the caller (the bundle's tokenizer), so
every build reads the same prompt. Times are wall clock (perf_counter), medians over `reps` repetitions, each
repetition a fresh generator. Does not build models, spawn processes, judge or write reports (bench/llm.py does).
"""

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_lorax.bench import measure
from edge_lorax.formats import names

PROMPT_TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


def prompt_ids(tokenizer, n: int) -> list:
    """n token ids of an English text (tokenizers.Tokenizer), the text repeated as often as n needs."""
    one = tokenizer.encode(PROMPT_TEXT).ids or [0]
    text = " ".join([PROMPT_TEXT] * max(80, n // max(len(one), 1) + 2))
    ids = tokenizer.encode(text).ids
    return (ids * (n // max(len(ids), 1) + 1))[:n]


def _median_ms(values) -> float:
    return round(float(np.median(values)) * 1e3, 3)


def _generator(og, model, length: int, min_length: int = 0):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length, min_length=min_length, do_sample=False)
    return og.Generator(model, params)


def _activate(gen, adapters, user):
    if user is not None:
        gen.set_active_adapter(adapters, user)


def ttft(og, model, ids: list, adapters, user, reps: int) -> list:
    """Seconds from appending the prompt to the first generated token, one fresh generator per repetition."""
    times = []
    for _ in range(reps):
        gen = _generator(og, model, len(ids) + 1)
        _activate(gen, adapters, user)
        start = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()
        times.append(time.perf_counter() - start)
    return times


def decode(og, model, ids: list, adapters, user, new: int, reps: int) -> list:
    """Tokens/s after the first token over `new` tokens (EOS ignored: min_length), per repetition."""
    rates = []
    for _ in range(reps):
        gen = _generator(og, model, len(ids) + new, len(ids) + new)
        _activate(gen, adapters, user)
        gen.append_tokens(ids)
        gen.generate_next_token()
        start = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        rates.append((new - 1) / (time.perf_counter() - start))
    return rates


def switch(og, model, adapters, register, adapter_file: Path, npz_file, reps: int) -> dict:
    """µs, medians: activating a preloaded user on a fresh generator (`preloaded_us`: the per-generation switch,
    `Generator.set_active_adapter`); registering one from its .onnx_adapter and activating it
    (`from_onnx_adapter_us`); from a user.npz (`from_user_npz_us`, where one is given: read, checked, converted)."""
    out = {}
    gens = [_generator(og, model, 8) for _ in range(reps)]
    t = []
    for g in gens:
        start = time.perf_counter()
        g.set_active_adapter(adapters, "user")
        t.append(time.perf_counter() - start)
    out["preloaded_us"] = round(float(np.median(t)) * 1e6, 2)
    for key, path, prefix in (("from_onnx_adapter_us", adapter_file, "f"), ("from_user_npz_us", npz_file, "n")):
        if path is None:
            continue
        t = []
        for i in range(reps):
            start = time.perf_counter()
            register(f"{prefix}{i}", Path(path))
            _generator(og, model, 8).set_active_adapter(adapters, f"{prefix}{i}")
            t.append(time.perf_counter() - start)
        out[key] = round(float(np.median(t)) * 1e6, 2)
    return out


def resident(register, adapter_file: Path, n: int) -> dict:
    """RSS growth (MiB) with n users registered (n copies of the user's .onnx_adapter, each its own user), freed
    heap trimmed before and after."""
    measure.trim_heap()
    before = measure.proc_status()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            path = Path(tmp) / f"u{i}{names.ADAPTER_SUFFIX}"
            shutil.copyfile(adapter_file, path)
            register(f"u{i}", path)
        measure.trim_heap()
        after = measure.proc_status()
    return {"users": n, "rss_mib": round(after.get("VmRSS", 0) - before.get("VmRSS", 0), 2),
            "anon_mib": round(after.get("RssAnon", 0) - before.get("RssAnon", 0), 2),
            "bytes_per_user_file": Path(adapter_file).stat().st_size}


def greedy(og, model, ids: list, adapters, user, n: int) -> list:
    """n greedy tokens after `ids` (EOS ignored)."""
    gen = _generator(og, model, len(ids) + n, len(ids) + n)
    _activate(gen, adapters, user)
    gen.append_tokens(ids)
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def _load(spec: dict):
    """(og, model, adapters, register(name, path)): a bundle through the runtime (LLM.add_user registers), any other
    folder through og.Config with the runtime's session options (og.Adapters.load registers)."""
    import onnxruntime_genai as og

    folder, threads = Path(spec["folder"]), spec["threads"]
    if spec.get("bundle"):
        from edge_lorax.runtime.llm import load_llm

        llm = load_llm(folder, threads)
        return og, llm.model, llm.adapters, llm.add_user
    config = og.Config(str(folder))
    config.clear_providers()
    options = {"intra_op_num_threads": threads, "log_severity_level": 3}  # as runtime.llm._load_model
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    model = og.Model(config)
    adapters = og.Adapters(model)
    return og, model, adapters, lambda name, path: adapters.load(str(path), name)


def decoder(spec: dict) -> dict:
    """One (build, threads) measured in this fresh process. spec: folder, bundle (bool), threads, prompts ({length:
    ids}), decode_ids, new_tokens, reps; user (a user file registered as "user" and active in every timing; none for
    a plain build); extras (bool): switch (switch_reps, adapter_file, npz_file), resident (resident users) and
    greedy tokens (chat_ids) after the timings."""
    start = time.perf_counter()
    og, model, adapters, register = _load(spec)
    load_s = time.perf_counter() - start
    user = None
    if spec.get("user"):
        register("user", Path(spec["user"]))
        user = "user"
    reps = spec["reps"]
    ttfts = {str(n): ttft(og, model, ids, adapters, user, reps) for n, ids in spec["prompts"].items()}
    rates = decode(og, model, spec["decode_ids"], adapters, user, spec["new_tokens"], reps)
    result = {"load_s": round(load_s, 3), "ttft_ms": {n: _median_ms(t) for n, t in ttfts.items()},
              "ttft_ms_reps": {n: [round(x * 1e3, 3) for x in t] for n, t in ttfts.items()},
              "decode_tokens_per_s": round(float(np.median(rates)), 2),
              "decode_reps": [round(float(r), 2) for r in rates],
              "memory_mib": measure.proc_status()}  # before the switch / resident stages add users
    if spec.get("extras"):
        if spec.get("chat_ids"):
            result["greedy"] = [greedy(og, model, ids, adapters, user, 32) for ids in spec["chat_ids"]]
        if user is not None and spec.get("adapter_file"):
            result["switch"] = switch(og, model, adapters, register, Path(spec["adapter_file"]), spec.get("npz_file"),
                                      spec["switch_reps"])
            if spec.get("resident"):
                result["resident"] = resident(register, Path(spec["adapter_file"]), spec["resident"])
    return result
