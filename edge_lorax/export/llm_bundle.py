"""`edge-lorax export` for a decoder of a KV-cache model type (formats.architectures.kv_cache_types(): llama, qwen2,
qwen3, gemma3_text, phi3): a KV-cache bundle that onnxruntime-genai opens as it is.

Folder: model.onnx + model.onnx.data (onnxruntime-genai's model builder at fp32 / int8 / int4, then the coefficient
branches of edge_lorax.export.decoder), genai_config.json, the tokenizer and chat template, the model's config.json
(and generation_config.json) for optimum's ORTModelForCausalLM, manifest.json and `<user>.onnx_adapter` when --coeffs
is given (the graph's defaults are that user, else zeros: the base model).
Inputs: input_ids, attention_mask, past_key_values.<i>.key/value and the coefficient inputs (optional, named like a
user.npz's keys); outputs: logits, present.<i>.key/value. Position ids come from the attention mask inside
GroupQueryAttention (the builder's graph has no position_ids input).

Before the folder appears, the prefill logits of a few fixed prompts are checked against the torch model with the
subspace injected (float64, LLM_TOLERANCE_RULE), for the defaults and two random coefficient sets (the response check catches
coefficient inputs that are not wired). Written atomically: any failure leaves nothing behind.
export.bundle's `genai-decoder` target: `check(job)` refuses, before any work, --merge, --ort-format, --exporter
dynamo, --fuse, a bad --builder-option and a head size GroupQueryAttention cannot take; `write(job, tmp)` writes.
Does not: generate (edge_lorax.runtime.llm does), model types other than formats.architectures.kv_cache_types().
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edge_lorax import __version__
from edge_lorax.builder.models import portable_model_id
from edge_lorax.export import decoder, passes
from edge_lorax.export.config import ExportJob
from edge_lorax.export.verify import COEFF_SCALES, RESPONSE_MIN, cosine
from edge_lorax.formats import architectures, names
from edge_lorax.formats.bundle import TARGET_DECODER, make_user_inputs, write_manifest
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.onnx_adapter import write_onnx_adapter
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.tokenizer_files import make_portable
from edge_lorax.formats.user import User

# Of max abs logit diff / scale, vs torch fp32. Quantized bases have no bound, measured instead (benchmarks/llm):
# on SmolLM2-135M the builder's int4 base alone moves logits by up to 17 (scale 26) and the next token on most
# prompt positions; int8 moves them by ~1 at the defaults but by 9 under the random U(-2, 2) coefficient set
# (int8 activations). The response check still proves the coefficient inputs wired at every precision.
TOLERANCES = {"fp32": 1e-4, "int8": None, "int4": None}
# cos(Δgraph, Δtorch) over the coefficient sets: an unwired graph scores ~0. int4 noise alone brings a wired SmolLM2
# graph to 0.77 (int8 0.997, fp32 1.0), hence its lower floor.
RESPONSE_MINS = {"fp32": RESPONSE_MIN, "int8": RESPONSE_MIN, "int4": 0.5}
# The reference is float64 torch: under the strong U(-2, 2) set, Gemma 3 270M's logits move by 0.0106 (of 33.8) between
# torch float32 and float64 alone (SmolLM2: ~1e-5), so float32 torch is no exact reference there; the graph may be as
# far from float64 as torch float32 is, plus the tolerance. Sets where that floor exceeds the fp32 tolerance are
# ill-conditioned (int8 noise is amplified chaotically there: Gemma int8 cosine 0.72 at U(-2, 2), 0.999 at U(-0.5,
# 0.5)) and are left out of the response check, which still needs the defaults and one well-conditioned set.
# ONNX Runtime's own float32 rounding is a second sample of that floor, not bounded by torch's: on Gemma 3 270M's U(-2,
# 2) set ORT was 0.0087 from float64 against torch float32's 0.0106 on an AMD EPYC and 0.0039 on an Intel Xeon (2.2x),
# so a graph may be FLOOR_FACTOR floors away. A miswired graph stays caught: on well-conditioned sets the floor is ~1e-5.
FLOOR_FACTOR = 3
LLM_TOLERANCE_RULE = ("per coefficient set: max |ONNX Runtime - float64 torch| <= tolerance x scale + 3 x max |float32 "
                      "torch - float64 torch|, scale = max(1, max |float64 torch logit|); response over the sets whose "
                      "float32 floor <= 1e-4 x scale")
VERIFY_PROMPTS = ("The capital of France is", "Write one word about the sea:", "ok")
SIDE_FILES = (names.TOKENIZER_FILE, names.TOKENIZER_CONFIG, names.CHAT_TEMPLATE, "special_tokens_map.json")
# The model folder's own, copied as they are: optimum's ORTModelForCausalLM.from_pretrained(bundle) needs config.json
# (heads, KV heads, model type) and takes generation_config.json's defaults; onnxruntime-genai reads neither.
HF_FILES = (names.BUNDLE_CONFIG, "generation_config.json")


def is_llm(config: dict) -> bool:
    """A decoder this module exports with a KV cache (others keep the cache-free logits graph of export.graph)."""
    return architectures.supports_kv_cache(config.get("model_type"))


def check_llm_config(path: Path, config: dict):
    """What onnxruntime's GroupQueryAttention needs, refused before any work: a head size that is a multiple of 16."""
    heads = config.get("num_attention_heads") or 1
    size = config.get("head_dim") or config.get("hidden_size", 0) // heads
    if size % 16:
        raise InputError(f"{path}: head size {size}; onnxruntime's GroupQueryAttention (the decoder bundle's attention) "
                         "needs a multiple of 16, so this model cannot get a KV-cache bundle")



def check(job: ExportJob):
    """What a KV-cache decoder bundle does not offer (yet), its builder options and its head size: refused before any
    work, one line each."""
    c = job.config
    for flag, on in (("--merge", c.merge), ("--ort-format", c.ort_format), ("--exporter dynamo", c.exporter != "torchscript"),
                     ("--fuse", c.fused)):  # the model builder's graph has GroupQueryAttention already
        if on:
            raise InputError(f"{flag} is not available for decoder (KV-cache) bundles; drop it")
    decoder.check_builder_options(c.builder_options)
    check_llm_config(job.path, job.model_config)


def write(job: ExportJob, tmp: Path):
    """Build, verify and write the decoder bundle into the (temporary) folder `tmp` (export_llm_bundle)."""
    c = job.config
    export_llm_bundle(job.path, job.subspace, tmp, job.coeffs, job.coeffs_path, c.quantize or "fp32", c.per_example,
                      c.builder_options, job.say, c.gradient)


def _builder_graph(path: Path, work: Path, precision: str, options=()) -> tuple:
    """(proto with weights loaded, genai config dict) from the model builder, built into `work`."""
    decoder.run_model_builder(path, work, precision, portable_model_id(path), options)
    config = json.loads((work / names.GENAI_CONFIG).read_text())
    return onnx.load(str(work / names.BUNDLE_MODEL)), config


def _save(model: onnx.ModelProto, out: Path) -> list:
    data = names.BUNDLE_MODEL + names.EXTERNAL_DATA_SUFFIX
    onnx.save_model(model, str(out / names.BUNDLE_MODEL), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    return [names.BUNDLE_MODEL, data]


def _copy_side_files(work: Path, path: Path, out: Path) -> list:
    """genai_config.json; the model folder's tokenizer files (tokenizer, chat template) when it has a tokenizer.json
    — what training read (builder.models.load_tokenizer) —, else the builder's processing files (the builder re-saves
    the tokenizer through AutoTokenizer, which on transformers 5 rebuilds Qwen2's / Phi-3's from the vocabulary);
    then the model folder's HF_FILES. Returns the names written, in that order; tokenizer_config.json is made loadable
    by both transformers lines (formats.tokenizer_files)."""
    copied = [names.GENAI_CONFIG]
    shutil.copyfile(work / names.GENAI_CONFIG, out / names.GENAI_CONFIG)
    source = path if (path / names.TOKENIZER_FILE).is_file() else work
    for name in SIDE_FILES:
        src = source / name
        if src.is_file():
            shutil.copyfile(src, out / name)
            copied.append(name)
    for name in HF_FILES:
        if (path / name).is_file():
            shutil.copyfile(path / name, out / name)
            copied.append(name)
    if names.TOKENIZER_CONFIG in copied:
        make_portable(out / names.TOKENIZER_CONFIG)
    return copied


def export_llm_bundle(path: Path, subspace: Subspace, tmp: Path, coeffs: User | None, coeffs_path, precision: str,
                      per_example: bool = False, builder_options=(), say=lambda phase: None,
                      gradient: bool = False) -> dict:
    """Build, insert, verify and write a decoder bundle into the (temporary) folder `tmp`; returns the manifest.
    per_example: coefficient inputs (batch_size, r, K) / (batch_size, K, r), one user per row (defaults: (1, ...)).
    gradient: also model.grad.onnx (export.decoder_gradient), checked against torch autograd."""
    if precision not in decoder.PRECISIONS:
        raise ValueError(f"precision must be one of {decoder.PRECISIONS}, got {precision!r}")
    defaults = coeffs.inputs() if coeffs is not None else _zero_user(subspace)
    work, mode = tmp / ".build", names.MODE_PER_EXAMPLE if per_example else names.MODE_SHARED
    say(f"onnxruntime-genai's model builder ({precision})")
    proto, config = _builder_graph(path, work, precision, builder_options)
    say("adding the coefficient branches")
    decoder.exact_embedding_scale(proto, json.loads((path / names.BUNDLE_CONFIG).read_text()), path)
    meta = {"edge_lorax.fingerprint": subspace.fingerprint, "edge_lorax.mode": mode, "edge_lorax.task": names.TASK_CAUSAL_LM}
    graph_defaults = {k: v[None] for k, v in defaults.items()} if per_example else defaults
    inserted = decoder.add_coefficients(proto, subspace, config, graph_defaults, per_example)
    model_files = _save(passes.set_metadata(inserted, meta), tmp)
    graph_inputs = passes.input_specs(inserted)
    del proto, inserted
    side = _copy_side_files(work, path, tmp)
    shutil.rmtree(work)
    say("verifying against torch (prefill logits, 3 coefficient sets)")
    check = verify_llm(tmp, path, subspace, defaults, config, precision, per_example)
    adapter = None
    if coeffs is not None:
        adapter = Path(coeffs_path).stem + names.ADAPTER_SUFFIX
        write_onnx_adapter(graph_defaults, tmp / adapter, coeffs.fingerprint)  # as the graph takes them
    manifest = _manifest(subspace, path, config, graph_defaults, mode, coeffs_path, precision, check,
                         {"model": model_files[0], "external_data": model_files[1:], "side": side, "adapter": adapter},
                         graph_inputs)
    manifest["builder_options"] = sorted(builder_options)
    if gradient:
        say("exporting the gradient graph (model.grad.onnx, checked against torch autograd)")
        manifest["gradient"] = _gradient(tmp, path, subspace, defaults)
        manifest["files"].update(gradient=manifest["gradient"]["file"], gradient_data=manifest["gradient"]["external_data"])
    write_manifest(tmp, manifest)
    return manifest


def _gradient(tmp: Path, path: Path, subspace: Subspace, defaults: dict) -> dict:
    """model.grad.onnx (+ .data) written and checked (export.decoder_gradient); its manifest entry."""
    from edge_lorax.export.decoder_gradient import write_decoder_gradient

    vocab = json.loads((path / names.BUNDLE_CONFIG).read_text())["vocab_size"]
    return write_decoder_gradient(tmp, path, subspace, defaults, vocab)


def _zero_user(subspace: Subspace) -> dict:
    """All-zero coefficients: the graph's defaults when no --coeffs is given (the base model)."""
    out = {}
    for module, ms in subspace.modules.items():
        out[names.coeff_name(module, names.COEFF_A)] = np.zeros((ms.rank, ms.k), np.float32)
        out[names.coeff_name(module, names.COEFF_B)] = np.zeros((ms.k, ms.rank), np.float32)
    return out


def kv_shape(config: dict) -> tuple:
    """(layers, kv heads, head size) from genai_config.json."""
    dec = config["model"]["decoder"]
    return dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]


def prefill_feeds(ids: list, config: dict) -> dict:
    """One prompt's prefill feeds: input_ids, attention_mask (1, T) int64 and empty past_key_values (1, H_kv, 0, d)."""
    layers, heads, size = kv_shape(config)
    feeds = {names.INPUT_IDS: np.array([ids], np.int64), names.ATTENTION_MASK: np.ones((1, len(ids)), np.int64)}
    for i in range(layers):
        for kind in ("key", "value"):
            feeds[names.kv_input_name(i, kind)] = np.zeros((1, heads, 0, size), np.float32)
    return feeds


def _reference_logits(path: Path, subspace: Subspace, prompts: list, feed_sets: list) -> tuple:
    """Torch prefill logits (1, T, vocab) per feed set and prompt, run in float32 and again in float64: the causal LM
    with the subspace injected. float64 is the reference; float32's distance from it is the set's own rounding floor."""
    import torch

    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_causal_lm

    net = load_causal_lm(path)
    inject_subspace(net, subspace, coeffs=feed_sets[0])
    return tuple(_logits(net.to(dtype), prompts, feed_sets) for dtype in (torch.float32, torch.float64))


def _logits(net, prompts: list, feed_sets: list) -> list:
    """[[logits (1, T, vocab) per prompt] per feed set] of the torch model in its current dtype."""
    import torch

    from edge_lorax.builder.inject import load_coeff_tensors

    out = []
    with torch.no_grad():
        for feeds in feed_sets:
            load_coeff_tensors(net, feeds)
            out.append([net(torch.tensor([ids])).logits.numpy() for ids in prompts])
    return out


def _random_sets(defaults: dict, seed: int = 1) -> list:
    """The defaults, then U(-s, s) coefficients per COEFF_SCALES (seeded)."""
    rng = np.random.default_rng(seed)
    sets = [defaults]
    for s in COEFF_SCALES:
        sets.append({k: ((rng.random(v.shape, dtype=np.float32) - 0.5) * np.float32(2 * s)) for k, v in defaults.items()})
    return sets


def _two_rows(session, ids: list, config: dict, first: dict, second: dict):
    """Logits (2, T, vocab) of one prompt as a batch of two rows, each with its own coefficient set."""
    feeds = {k: np.concatenate([v, v]) for k, v in prefill_feeds(ids, config).items()}
    feeds.update({k: np.stack([first[k], second[k]]) for k in first})
    return session.run([names.LOGITS], feeds)[0]


def _prompts(bundle: Path) -> list:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / names.TOKENIZER_FILE))
    return [tok.encode(p).ids or [0] for p in VERIFY_PROMPTS]


def verify_llm(bundle: Path, path: Path, subspace: Subspace, defaults: dict, config: dict, precision: str,
               per_example: bool = False) -> dict:
    """Prefill logits of the written graph vs float64 torch for the defaults and random coefficient sets (per example:
    fed as (1, ...), and the last prompt once more as a batch of two rows with two different sets); raises RuntimeError
    (nothing is written) when a set's max |Δ| exceeds TOLERANCES[precision] x scale + that set's float32 floor
    (LLM_TOLERANCE_RULE), or when the logits do not follow the coefficients (response over the well-conditioned sets)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    session = ort.InferenceSession(str(bundle / names.BUNDLE_MODEL), opts, providers=["CPUExecutionProvider"])
    prompts, sets = _prompts(bundle), _random_sets(defaults)
    want32, want = _reference_logits(path, subspace, prompts, sets)
    lift = (lambda f: {k: v[None] for k, v in f.items()}) if per_example else (lambda f: f)  # noqa: E731
    got = [[session.run([names.LOGITS], {**prefill_feeds(ids, config), **lift(feeds)})[0] for ids in prompts]
           for feeds in sets]
    if per_example:  # two rows, two users: row i must be set i's logits
        pair = _two_rows(session, prompts[-1], config, sets[1], sets[2])
        got = got + [[pair[0:1]], [pair[1:2]]]
        want, want32 = (w + [[w[1][-1]], [w[2][-1]]] for w in (want, want32))
    flat = lambda runs: [np.concatenate([x.ravel() for x in r]) for r in runs]  # noqa: E731
    check = _parity(flat(got), flat(want32), flat(want), precision, len(sets))
    check.update(coefficient_sets=len(sets), prompts=len(prompts), next_token_agreement_pct=[
        int(np.mean([a[0, -1].argmax() == b[0, -1].argmax() for a, b in zip(gr, wr)]) * 100) for gr, wr in zip(got, want)])
    return check


def _parity(g: list, w32: list, w: list, precision: str, n: int, runtime: str = "ONNX Runtime") -> dict:
    """The verification record of flattened logits per set (graph g, torch float32 w32, torch float64 w); raises
    RuntimeError as verify_llm says. Only the first n sets (not the per-example pair) enter the response."""
    diffs = [float(np.abs(a - b).max()) for a, b in zip(g, w)]
    floors = [float(np.abs(a - b).max()) for a, b in zip(w32, w)]  # torch float32's own rounding error per set
    scale, tol = max(1.0, max(float(np.abs(x).max()) for x in w)), TOLERANCES[precision]
    bad = [i for i, (d, f) in enumerate(zip(diffs, floors)) if tol is not None and not d <= tol * scale + FLOOR_FACTOR * f]
    if bad:
        i = bad[0]
        raise RuntimeError(f"{precision} decoder graph: {runtime} differs from float64 torch by {diffs[i]:.3g} > "
                           f"{tol:g} x {scale:.3g} + {FLOOR_FACTOR} x {floors[i]:.3g} (torch float32's own error) on coefficient set "
                           f"{i}; nothing written")
    calm = [0] + [i for i in range(1, n) if floors[i] <= TOLERANCES["fp32"] * scale]
    calm = calm if len(calm) > 1 else list(range(n))  # sets where float32 arithmetic itself is stable
    response, floor = cosine([g[i] for i in calm], [w[i] for i in calm]), RESPONSE_MINS[precision]
    if not response >= floor:
        raise RuntimeError(f"{precision} decoder graph: its logits follow the coefficients with cosine {response:.3f} "
                           f"to torch's (< {floor}); the coefficient inputs are not wired; nothing written")
    return {"max_abs_diff": max(diffs), "tolerance": tol, "scale": scale, "fp32_floor": floors, "floor_factor": FLOOR_FACTOR,
            "response": response, "response_min": floor, "response_sets": calm,
            "effect": max(float(np.abs(x - w[0]).max()) for x in w[:n])}


def _manifest(subspace: Subspace, path: Path, config: dict, defaults: dict, mode: str, coeffs_path, precision: str,
              check: dict, files: dict, graph_inputs: list) -> dict:
    """manifest.json of a decoder bundle (docs/formats.md, "Decoder bundle"); no times, so it is reproducible."""
    import onnxruntime_genai

    layers, heads, size = kv_shape(config)
    lead = [decoder.BATCH] if mode == names.MODE_PER_EXAMPLE else []
    coeffs = {k: lead + list(v.shape[len(lead):]) for k, v in sorted(defaults.items())}
    return {
        "target": TARGET_DECODER, "fingerprint": subspace.fingerprint,
        "base_model": portable_model_id(path), "subspace_base_model": subspace.base_model,
        "task": names.TASK_CAUSAL_LM, "mode": mode, "precision": precision, "kv_cache": True,
        "user_inputs": make_user_inputs((k, shape, "float32") for k, shape in coeffs.items()),
        "kv": {"layers": layers, "heads": heads, "head_size": size, "context_length": config["model"]["context_length"]},
        "eos_token_id": config["model"]["eos_token_id"], "pad_token_id": config["model"].get("pad_token_id"),
        "inputs": graph_inputs,
        "coefficients": coeffs, "defaults": Path(coeffs_path).name if coeffs_path else "zeros",
        "files": files, "verification": {precision: check}, "tolerance_rule": LLM_TOLERANCE_RULE,
        "exporter": {"name": "onnxruntime-genai model builder + edge_lorax.export.decoder", "edge_lorax": __version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "onnxruntime_genai": onnxruntime_genai.__version__},
    }
