"""The generative main job on the embedded SmolLM2-135M-Instruct: committed decoder adapters -> subspace -> two users
-> one KV-cache bundle -> a third user fitted on the device -> swaps on one onnxruntime-genai model
(`edge-lorax demo --llm`).

Builds a subspace from eleven of the twelve committed decoder adapters (`adapters-smollm2/`, spam held out), makes two
users by training-free projection (the held-out spam LoRA, and the TREC question-type LoRA), exports one int8 decoder
bundle (verified against torch; with its gradient graph, model.grad.onnx), then personalises a third user on the
device: 48 SMS messages of the held-out spam task (a seeded sample of its training rows, 24 per label, written as a
task CSV: the person's local examples) fitted for 20 Adam steps from the base model by `personalize`'s torch-free
fitter (runtime.personalize_llm). It loads the bundle once, registers the three users, answers each user's prompts in
turn on the same model (the on-device user's before = the base model, after = its fit), then times a short free
generation per user (time to first token, tokens/s). A few minutes on 2 cores (the gradient graph's export and the fit
are most of it). Trains nothing with torch (benchmarks/decoder/sources.py made the adapters; `edge-lorax train` trains
users on a host).
"""

import json
import sys
import time
from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.errors import MissingInputError

CHECKOUT_ADAPTERS = Path(__file__).resolve().parents[1] / "adapters-smollm2"  # a source checkout has them
HELD_OUT, SECOND = "spam-sms", "trec-coarse"
DEVICE, DEVICE_TASK, DEVICE_ROWS, DEVICE_STEPS = "on-device", "spam:sms", 48, 20  # the held-out task, few rows, short
PROMPTS = {  # each user's own task: the instruction the adapters were trained on (labels listed)
    HELD_OUT: [("WINNER!! You have been selected for a free cruise. Call 0800 now to claim.", ("ham", "spam")),
               ("Are we still meeting for lunch at one?", ("ham", "spam"))],
    SECOND: [("Who wrote the novel War and Peace?", ("abbreviation", "description", "entity", "human", "location", "numeric")),
             ("How many moons does Mars have?", ("abbreviation", "description", "entity", "human", "location", "numeric"))],
}
PROMPTS[DEVICE] = PROMPTS[HELD_OUT]
FREE_PROMPT = "Write two sentences about the sea."


def log(msg: str):
    print(f"[demo --llm] {msg}", file=sys.stderr, flush=True)


def _source_adapters(adapters=None) -> list:
    folder = Path(adapters) if adapters else CHECKOUT_ADAPTERS
    found = sorted(p for p in folder.glob("*") if (p / names.ADAPTER_CONFIG).is_file())
    if not any(p.name == HELD_OUT for p in found) or not any(p.name == SECOND for p in found) or len(found) < 4:
        raise MissingInputError(f"{folder}: not the decoder source adapters ({HELD_OUT}, {SECOND} and others); pass "
                                "--adapters with the `adapters-smollm2/` folder of an edge-lorax checkout")
    return found


def _build_users(adapters: list, out: Path) -> tuple:
    """Subspace (sources minus the held-out adapter) and the two projected users."""
    from edge_lorax.builder.project import project_adapter
    from edge_lorax.builder.subspace import build_subspace
    from edge_lorax.formats.subspace import write_subspace
    from edge_lorax.formats.user import write_user

    sources = [a for a in adapters if a.name != HELD_OUT]
    sub = build_subspace(sources, components=8, mean="keep")
    write_subspace(sub, out / "subspace", overwrite=True)
    users = {}
    for name in (HELD_OUT, SECOND):
        proj = project_adapter(sub, next(a for a in adapters if a.name == name))
        users[name] = write_user(proj.coeffs, out / f"{name}.npz")
        log(f"{name} projected (relative ΔW error {proj.overall:.3f}{', held out of the subspace' if name == HELD_OUT else ''})")
    log(f"subspace {sub.fingerprint}: {len(sources)} decoder sources, K=8")
    return out / "subspace", users


def local_examples(path: Path, spec: str = DEVICE_TASK, rows: int = DEVICE_ROWS, seed: int = 0) -> Path:
    """The person's local examples: `rows` training rows of task `spec` (builder.data.load_task), a seeded sample with
    as many rows of each label (spam:sms is 87 % ham: a plain sample of 48 held 3 spam, and its fit answered ham to
    everything), written to `path` as a task CSV (text, label word) as `personalize --data` reads it."""
    import csv

    import numpy as np

    from edge_lorax.builder.data import load_task

    task = load_task(spec)
    rng, y = np.random.default_rng(seed), np.asarray(task.train.targets)
    order = rng.permutation(len(y))  # (N,)
    pick = rng.permutation(np.concatenate([order[y[order] == c][:rows // len(task.labels)]
                                           for c in range(len(task.labels))]))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((task.train.texts[i], task.labels[int(task.train.targets[i])]) for i in pick)
    return path


def personalize_on_device(bundle: Path, data: Path, out: Path, steps: int = DEVICE_STEPS) -> dict:
    """Fit a user from the base model on the local examples with the bundle's gradient graph (torch-free, seed 0,
    `steps` Adam steps of batch 8); writes it to `out`; returns the fit's figures (held-out loss / exact match on its
    own 20 % split, before = the base model, after = the fit)."""
    from edge_lorax.runtime.personalize_llm import LLMFitConfig, personalize_llm_file

    r = personalize_llm_file(bundle, data, out, config=LLMFitConfig(steps=steps), overwrite=True, progress=log).report
    log(f"{DEVICE} fitted on the device: {r['examples']} local examples, {r['steps']} steps, {r['seconds']:.0f} s")
    return {"examples": r["examples"], "steps": r["steps"], "seconds": r["seconds"], "heldout_before": r["start"],
            "heldout_after": r["fitted"], "kept": r["kept"]}


def _swap_users(bundle: Path, users: dict, prompts: dict = PROMPTS) -> dict:
    """One model, the users registered; each answers its prompts, in turn, and the on-device user's prompts are asked
    of the base model too (its before); {"answers": {user: [(prompt, answer)]}, "before": [...], timings}."""
    from edge_lorax.runtime.llm import load_llm

    llm = load_llm(bundle)
    for name, path in users.items():
        llm.add_user(name, path)
    ask = lambda user, rows: [(text, llm.decode(list(llm.generate(text, user, 8, choices=choices))))  # noqa: E731
                              for text, choices in rows]
    answers = {name: ask(name, prompts[name]) for name in users}
    timing = {}
    for name in users:
        gen = llm.generate(FREE_PROMPT, name, 32, chat=True)
        text = llm.decode(list(gen))
        timing[name] = {"time_to_first_token_ms": round(gen.time_to_first_token_ms, 1),
                        "tokens_per_s": round(gen.tokens_per_s or 0.0, 1), "text": text}
    return {"answers": answers, "before": ask(None, prompts[DEVICE]) if DEVICE in users else [],
            "free_generation": timing}


def run_llm_demo(out, adapters=None, precision: str = "int8") -> dict:
    """The whole job; returns {"answers": {user: [(prompt, answer)]}, "before": the base model's answers to the
    on-device user's prompts, "device": its fit (personalize_on_device), "free_generation": {user: timing}}; writes
    subspace/, the users, local-examples.csv, bundle/ and demo.json under `out`."""
    from edge_lorax.export import ExportConfig, export_bundle

    out, start = Path(out), time.perf_counter()
    found = _source_adapters(adapters)
    out.mkdir(parents=True, exist_ok=True)
    subspace, users = _build_users(found, out)
    log(f"exporting the {precision} decoder bundle (onnxruntime-genai model builder + coefficient inputs, verified)")
    config = ExportConfig(quantize=None if precision == "fp32" else precision, overwrite=True, gradient=True)
    bundle = export_bundle("smollm2", subspace, out / "bundle", users[HELD_OUT], config)
    log(f"personalising {DEVICE} on the device from {DEVICE_ROWS} local {DEVICE_TASK} examples ({DEVICE_STEPS} steps)")
    device = personalize_on_device(bundle, local_examples(out / "local-examples.csv"), out / f"{DEVICE}.npz")
    result = _swap_users(bundle, {**users, DEVICE: out / f"{DEVICE}.npz"})
    result["device"] = device
    (out / "demo.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"done in {time.perf_counter() - start:.0f} s")
    return result
