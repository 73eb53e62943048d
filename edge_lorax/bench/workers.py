"""One bench measurement per fresh process: `python -m edge_lorax.bench.workers SPEC_JSON` prints one JSON line.

Kinds: latency (one model, one shape, one thread count), paired (several models alternated in blocks of equal
length in a balanced order, idle sessions not spinning: overhead ratios robust to drift), switch (user-switch
costs), memory (N resident users), torch (eager reference), decoder (a decoder build through onnxruntime-genai:
bench/llm_workers.py). Every ORT model is fed the same way — preloaded numpy
arrays through session.run, as the runtime does — so paths differ only in the graph. The torch kind (and
`torch_model`, the reference prepare's parity table is taken against) imports torch; nothing else here does.
Does not prepare models, judge numbers or write reports.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_lorax.bench import llm_workers, measure
from edge_lorax.formats import names
from edge_lorax.formats.synthetic import random_user
from edge_lorax.formats.user import read_user
from edge_lorax.runtime.bundle import SessionConfig, session_options

RESULT_PREFIX = "BENCH_RESULT "


def token_inputs(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """Deterministic random token ids (avoiding the first 5 special ids) and an all-ones mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, max(vocab, 6), size=(batch, seq), dtype=np.int64)
    return {names.INPUT_IDS: ids, names.ATTENTION_MASK: np.ones_like(ids)}


def torch_model(model_dir, subspace_dir, coeffs_path, num_labels: int):
    """The injected torch model with a user's coefficients and head: the reference every graph must match (prepare's
    parity table, the torch kind); imports torch and the builder at call time."""
    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_model, write_head
    from edge_lorax.formats.subspace import read_subspace

    coeffs = read_user(coeffs_path)
    model = load_model(Path(model_dir), num_labels)
    inject_subspace(model, read_subspace(subspace_dir), coeffs=coeffs.coefficients)
    if coeffs.head and num_labels:
        write_head(model, coeffs.head)
    return model.eval()


def load_feeds(path) -> dict:
    """A feeds .npz (plain arrays, pickles refused) -> {name: float32 array}; None -> {}."""
    if not path:
        return {}
    with np.load(path, allow_pickle=False) as npz:
        return {k: np.ascontiguousarray(npz[k]) for k in npz.files if k != names.META_KEY}


def open_session(path, threads: int, spinning: bool = True) -> ort.InferenceSession:
    """A session as the runtime opens one (runtime.bundle.session_options), on `threads` intra-op threads."""
    return ort.InferenceSession(str(path), session_options(SessionConfig(threads=threads, spinning=spinning)),
                                providers=["CPUExecutionProvider"])


def runner(session, feeds: dict, tokens: dict):
    """A zero-argument run closure over preloaded arrays (only feeds the graph declares are bound; a declared
    token_type_ids, as in optimum's plain export, gets zeros like input_ids)."""
    declared = {i.name for i in session.get_inputs()} | {i.name for i in session.get_overridable_initializers()}
    types = {names.TOKEN_TYPE_IDS: np.zeros_like(tokens[names.INPUT_IDS])}
    values = {k: v for k, v in {**types, **tokens, **feeds}.items() if k in declared}
    outputs = [o.name for o in session.get_outputs()]
    return lambda: session.run(outputs, values)


def latency(spec: dict) -> dict:
    """Session creation, warm-up, calibrated consecutive runs; p50/p90/p99, peak and anon/file RSS."""
    mem0 = measure.proc_status()
    t0 = time.perf_counter()
    session = open_session(spec["model"], spec["threads"])
    session_s = time.perf_counter() - t0
    mem1 = measure.proc_status()
    run = runner(session, load_feeds(spec.get("feeds")), token_inputs(spec["batch"], spec["seq"], spec["vocab"]))
    n = measure.calibrate(run, spec["warmup"], spec["budget_s"], spec["min_runs"], spec["max_runs"])
    times = [t for block in measure.time_blocks(run, spec["blocks"], max(1, n // spec["blocks"])) for t in block]
    return {"stats": measure.summarize(times).to_dict(), "session_s": session_s,
            "memory": {"start": mem0, "session": mem1, "end": measure.proc_status()}}


SWITCH_RUNS = 2  # runs after switching models, untimed: cold caches and the previous session's threads (see report)


def common_block(runs: dict, warmup: int, block_s: float) -> int:
    """Warm every session (its first runs allocate and pack weights), then one run count for every model's blocks:
    block_s over the slowest model's warm run (at least 3). The same count for all: a model never gets shorter
    blocks because its own calibration happened to be slow."""
    slowest = 0.0
    for fn in runs.values():
        times = measure.time_runs(fn, max(warmup, 2))
        slowest = max(slowest, float(np.median(times[-max(1, warmup // 2):])))
    return int(min(max(block_s / max(slowest, 1e-9), 3), 500))


def paired(spec: dict) -> dict:
    """All models loaded in one process, alternated in blocks; per model and round the median wall and thread-CPU
    time (ms) of a block's runs after its first SWITCH_RUNS. Idle sessions do not spin (else their pool threads
    take the cores from the one that runs), every model gets the same runs per block, and each round's order is a
    row of measure.balanced_orders (each model follows every other equally often)."""
    tokens = token_inputs(spec["batch"], spec["seq"], spec["vocab"])
    runs = {m["label"]: runner(open_session(m["model"], spec["threads"], spinning=False), load_feeds(m.get("feeds")),
                               tokens) for m in spec["models"]}
    per_block, labels = common_block(runs, spec["warmup"], spec["block_s"]), list(runs)
    orders = measure.balanced_orders(len(labels))
    medians, cpu = {lab: [] for lab in labels}, {lab: [] for lab in labels}
    for r in range(spec["rounds"]):
        for lab in (labels[i] for i in orders[r % len(orders)]):
            measure.time_runs(runs[lab], SWITCH_RUNS)
            wall, thread_cpu = measure.wall_and_cpu_runs(runs[lab], per_block)
            medians[lab].append(float(np.median(wall)) * 1e3)
            cpu[lab].append(float(np.median(thread_cpu)) * 1e3)
    return {"block_medians_ms": medians, "block_cpu_ms": cpu, "per_block": per_block, "switch_runs": SWITCH_RUNS}


def _median_us(fn, reps: int) -> dict:
    times = np.asarray(measure.time_runs(fn, reps)) * 1e6
    return {"p50_us": float(np.median(times)), "p90_us": float(np.percentile(times, 90)), "n": reps}


def _run_closures(bundle, users: list, tokens: dict, adapter_paths: list) -> dict:
    """Three per-run paths on the same session: one user; rebinding a different preloaded user each run; ORT's
    LoraAdapter path with a different preloaded adapter (its own RunOptions) each run."""
    from edge_lorax.runtime.infer import feeds_for

    out_names, state = list(bundle.outputs), {"i": 0, "j": 0}
    tok_values = feeds_for(bundle, None, tokens)
    options = []
    for p in adapter_paths:
        adapter, ro = ort.LoraAdapter(), ort.RunOptions()
        adapter.Load(str(p))
        ro.add_active_adapter(adapter)
        options.append((adapter, ro))

    def bind():
        state["i"] += 1
        return {**tok_values, **users[state["i"] % len(users)].arrays}

    def adapter_run():
        state["j"] += 1
        return bundle.session.run(out_names, tokens, options[state["j"] % len(options)][1])

    return {"bind": bind, "same": lambda: bundle.session.run(out_names, feeds_for(bundle, users[0], tokens)),
            "rebind": lambda: bundle.session.run(out_names, bind()), "adapter": adapter_run,
            "defaults": lambda: bundle.session.run(out_names, tok_values)}


def _switch_rebind(bundle, users: list, tokens: dict, adapter_paths: list, reps: int) -> dict:
    """The switch itself (binding another preloaded user, µs) and whole runs per path — one user, another user each
    run, another LoraAdapter each run, no user feeds (the graph defaults) — interleaved in blocks of 10 so drift hits
    every path alike; wall time and this thread's CPU time (the session has 1 thread)."""
    fns = _run_closures(bundle, users, tokens, adapter_paths)
    paths = ("same", "rebind", "adapter", "defaults")
    wall, cpu = {k: [] for k in paths}, {k: [] for k in paths}
    for k in paths:
        measure.time_runs(fns[k], 5)
    for _ in range(max(1, reps // 10)):
        for k in paths:
            wall[k] += measure.time_runs(fns[k], 10)
            cpu[k] += measure.cpu_runs(fns[k], 10)
    runs = {k: {"wall": measure.summarize(wall[k]).to_dict(), "cpu": measure.summarize(cpu[k]).to_dict()} for k in paths}
    return {"bind": _median_us(fns["bind"], reps * 10), "runs": runs}


def _switch_adapter(adapter_paths: list, reps: int) -> dict:
    """ORT's multi-LoRA path: activate a preloaded LoraAdapter (fresh RunOptions), and load + activate from file."""
    adapters = []
    for p in adapter_paths:
        a = ort.LoraAdapter()
        a.Load(str(p))
        adapters.append(a)
    state = {"i": 0}

    def activate():
        state["i"] += 1
        ro = ort.RunOptions()
        ro.add_active_adapter(adapters[state["i"] % len(adapters)])
        return ro

    def load_activate():
        state["i"] += 1
        a = ort.LoraAdapter()
        a.Load(str(adapter_paths[state["i"] % len(adapter_paths)]))
        ro = ort.RunOptions()
        ro.add_active_adapter(a)
        return ro

    return {"activate_preloaded": _median_us(activate, reps * 10), "load_and_activate": _median_us(load_activate, reps)}


def switch(spec: dict) -> dict:
    """User-switch costs on the EigenLoRAx bundle, ORT's LoraAdapter path (both graphs), and a new merged session."""
    from edge_lorax.runtime.bundle import open_bundle
    from edge_lorax.runtime.users import load_user

    bundle = open_bundle(spec["bundle"], SessionConfig(threads=spec["threads"]))
    tokens = token_inputs(spec["batch"], spec["seq"], spec["vocab"])
    users = [load_user(bundle, p) for p in spec["user_files"]]
    files = spec["user_files"]
    state = {"i": 0}

    def load_one():
        state["i"] += 1
        return load_user(bundle, files[state["i"] % len(files)])

    def load_adapter():
        state["i"] += 1
        return load_user(bundle, spec["eigen_adapters"][state["i"] % len(spec["eigen_adapters"])])

    out = {"rebind_preloaded": _switch_rebind(bundle, users, tokens, spec["eigen_adapters"], spec["reps"]),
           "load_user_npz": _median_us(load_one, spec["reps"]), "load_user_adapter": _median_us(load_adapter, spec["reps"]),
           "adapter_eigen": _switch_adapter(spec["eigen_adapters"], spec["reps"]),
           "adapter_lora": _switch_adapter(spec["lora_adapters"], spec["reps"])}
    out["new_merged_session"] = _new_session(spec["merged_model"], spec["threads"], tokens, spec["session_reps"])
    return out


def _new_session(model, threads: int, tokens: dict, reps: int) -> dict:
    """Creating a session on a merged model (the switch a merged deployment needs), and that plus its first run."""
    create, first = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        session = open_session(model, threads)
        t1 = time.perf_counter()
        runner(session, {}, tokens)()
        first.append((time.perf_counter() - t0) * 1e3)
        create.append((t1 - t0) * 1e3)
        del session
    return {"create_ms": float(np.median(create)), "create_and_first_run_ms": float(np.median(first)), "n": reps}


def _random_users(specs: dict, n: int, seed: int) -> list:
    """n users' arrays (formats.synthetic, float32 without temporaries), read-only as the runtime holds them."""
    out = []
    for i in range(n):
        user = random_user(specs, "", seed * 1_000_003 + i).inputs()
        for arr in user.values():
            arr.flags.writeable = False
        out.append(user)
    return out


def memory(spec: dict) -> dict:
    """RSS growth from N users held resident the runtime's way (read-only arrays per input), after the session is
    open and warm and freed heap is returned to the OS (else reused free pages would hide the growth)."""
    session = open_session(spec["model"], 1)
    run = runner(session, load_feeds(spec.get("feeds")), token_inputs(1, 16, spec["vocab"]))
    run()
    shapes = {k: tuple(v.shape) for k, v in load_feeds(spec["feeds"]).items()}
    measure.trim_heap()
    before = measure.proc_status()
    arrays = _random_users(shapes, spec["users"], 1)
    after = measure.proc_status()
    tensor_bytes = sum(a.nbytes for u in arrays for a in u.values())
    return {"before": before, "after": after, "tensor_bytes": tensor_bytes,
            "delta_anon_mib": after.get("RssAnon", 0) - before.get("RssAnon", 0),
            "delta_rss_mib": after.get("VmRSS", 0) - before.get("VmRSS", 0)}


def _torch_ref(spec: dict) -> dict:
    """The injected torch model in eager mode on `device`, same token inputs; 'not available' without that device."""
    import torch

    if spec["device"] == "cuda" and not torch.cuda.is_available():
        return {"available": False, "reason": "not available: no CUDA device"}
    torch.set_num_threads(spec["threads"])
    model = torch_model(spec["model_dir"], spec["subspace"], spec["coeffs"], spec["num_labels"]).to(spec["device"])
    tokens = {k: torch.from_numpy(v).to(spec["device"]) for k, v in
              token_inputs(spec["batch"], spec["seq"], spec["vocab"]).items()}
    sync = torch.cuda.synchronize if spec["device"] == "cuda" else (lambda: None)

    def run():
        with torch.inference_mode():
            model(**tokens)
        sync()

    n = measure.calibrate(run, spec["warmup"], spec["budget_s"], spec["min_runs"], spec["max_runs"])
    stats = measure.summarize(measure.time_runs(run, n)).to_dict()
    return {"available": True, "stats": stats, "device_name": torch.cuda.get_device_name() if spec["device"] == "cuda"
            else measure.cpu_model(), "memory": measure.proc_status()}


KINDS = {"latency": latency, "paired": paired, "switch": switch, "memory": memory, "torch": _torch_ref,
         "decoder": llm_workers.decoder}


def main(argv=None):
    """Entry point of a worker process: SPEC_JSON in argv, one RESULT_PREFIX line out."""
    spec = json.loads((argv or sys.argv[1:])[0])
    result = KINDS[spec["kind"]](spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
