"""The generative main job on the embedded SmolLM2-135M-Instruct: committed decoder adapters -> subspace -> two users
-> one KV-cache bundle -> swaps on one onnxruntime-genai model (`edge-lorax demo --llm`).

Builds a subspace from eleven of the twelve committed decoder adapters (`adapters-smollm2/`, spam held out), makes two
users by training-free projection (the held-out spam LoRA, and the TREC question-type LoRA), exports one int8 decoder
bundle (verified against torch; with its gradient graph, model.grad.onnx, which `personalize` fits users on the device
with), loads it once, registers both users and answers each user's prompts in turn on the
same model, then times a short free generation per user (time to first token, tokens/s). A few minutes on 2 cores.
Does not train anything (benchmarks/decoder/sources.py made the adapters; `edge-lorax train` trains users).
"""

import json
import sys
import time
from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.errors import MissingInputError

CHECKOUT_ADAPTERS = Path(__file__).resolve().parents[1] / "adapters-smollm2"  # a source checkout has them
HELD_OUT, SECOND = "spam-sms", "trec-coarse"
PROMPTS = {  # each user's own task: the instruction the adapters were trained on (labels listed)
    HELD_OUT: [("WINNER!! You have been selected for a free cruise. Call 0800 now to claim.", ("ham", "spam")),
               ("Are we still meeting for lunch at one?", ("ham", "spam"))],
    SECOND: [("Who wrote the novel War and Peace?", ("abbreviation", "description", "entity", "human", "location", "numeric")),
             ("How many moons does Mars have?", ("abbreviation", "description", "entity", "human", "location", "numeric"))],
}
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


def _swap_users(bundle: Path, users: dict) -> dict:
    """One model, both users registered; each answers its prompts, in turn; {user: [(prompt, answer)]}."""
    from edge_lorax.runtime.llm import load_llm

    llm = load_llm(bundle)
    for name, path in users.items():
        llm.add_user(name, path)
    answers = {}
    for name in users:
        answers[name] = [(text, llm.decode(list(llm.generate(text, name, 8, choices=choices))))
                         for text, choices in PROMPTS[name]]
    timing = {}
    for name in users:
        gen = llm.generate(FREE_PROMPT, name, 32, chat=True)
        text = llm.decode(list(gen))
        timing[name] = {"time_to_first_token_ms": round(gen.time_to_first_token_ms, 1),
                        "tokens_per_s": round(gen.tokens_per_s or 0.0, 1), "text": text}
    return {"answers": answers, "free_generation": timing}


def run_llm_demo(out, adapters=None, precision: str = "int8") -> dict:
    """The whole job; returns {"answers": {user: [(prompt, answer)]}, "free_generation": {user: timing}}; writes
    subspace/, the users, bundle/ and demo.json under `out`."""
    from edge_lorax.export import ExportConfig, export_bundle

    out, start = Path(out), time.perf_counter()
    found = _source_adapters(adapters)
    out.mkdir(parents=True, exist_ok=True)
    subspace, users = _build_users(found, out)
    log(f"exporting the {precision} decoder bundle (onnxruntime-genai model builder + coefficient inputs, verified)")
    config = ExportConfig(quantize=None if precision == "fp32" else precision, overwrite=True, gradient=True)
    bundle = export_bundle("smollm2", subspace, out / "bundle", users[HELD_OUT], config)
    result = _swap_users(bundle, users)
    (out / "demo.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"done in {time.perf_counter() - start:.0f} s")
    return result
