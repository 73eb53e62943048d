"""The encoder export target (`onnx-encoder`): one verified ONNX graph per base model + subspace, for
edge_lorax.runtime, optimum's ORTModelFor* and sentence-transformers' ONNX backend.

Folder: model.onnx (weights inline; `model.onnx.data` only past protobuf's 2 GB), optionally model.int8.onnx, the
.ort files, model.fused.onnx and model.grad.onnx, tokenizer files, config.json, manifest.json (through
formats.bundle.write_manifest), `<user>.onnx_adapter` when --coeffs is given, the subspace's sources.npz (its
projected source adapters, for on-device personalisation) when it has one, and for a features bundle
sentence-transformers' module files. Every graph is checked against torch (export.verify) before the folder appears;
a model whose modules or shapes differ from the subspace's is refused while the graphs are prepared.
Refuses (`check`, before any work): --quantize int4 and --builder-option (the KV-cache decoder's; a Llama exported
for another task gets this target and is told so), --task causal-lm on a model whose config names no causal LM head
(an encoder: AutoModelForCausalLM would bolt a random head on it that `run` cannot serve).
Does not: read or check the common inputs (export.bundle does, into an export.config.ExportJob), make the folder
atomic (export.bundle does), export KV-cache decoders (export.llm_bundle), benchmark or serve users
(edge_lorax.runtime does).
"""

import contextlib
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edge_lorax import __version__
from edge_lorax.builder.models import portable_model_id
from edge_lorax.export import fuse, passes
from edge_lorax.export import gradient as grad
from edge_lorax.export import graph as g
from edge_lorax.export.config import ExportJob
from edge_lorax.export.quantize import quantize_int8
from edge_lorax.export.verify import TOLERANCE_RULE, TOLERANCES, check_variant
from edge_lorax.formats import architectures, names
from edge_lorax.formats.bundle import TARGET_ENCODER, write_manifest
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.onnx_adapter import write_onnx_adapter
from edge_lorax.formats.sources import SOURCES_FILE, read_sources
from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.user import subspace_shapes

TOKENIZER_FILES = (names.TOKENIZER_FILE, names.TOKENIZER_CONFIG, "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model")
INLINE_LIMIT = 1_800_000_000  # bytes of initializers above which weights go to external data (protobuf: 2 GB)
ST_MODULES = "modules.json"  # sentence-transformers' module list; with these beside model.onnx, features bundles load
ST_FILES = (ST_MODULES, "sentence_bert_config.json", "config_sentence_transformers.json")  # as SentenceTransformer(bundle, backend="onnx")
VERIFY_TEXTS = ("A short one.", "The exporter checks every graph against torch before the folder appears.", "ok")


def check(job: ExportJob):
    """What an encoder bundle does not offer, refused before any work: --quantize int4 and --builder-option (the
    KV-cache decoder's), --task causal-lm on a model without a causal LM head."""
    if job.config.quantize == "int4" or job.config.builder_options:
        kv = ", ".join(architectures.kv_cache_types())
        raise InputError(f"--quantize int4 and --builder-option are for decoder bundles (the KV-cache decoder: --task "
                         f"causal-lm on a {kv} model); {job.path} ({job.model_config.get('model_type')}) with --task "
                         f"{job.task} is exported as the encoder-style graph (onnx-encoder), which takes --quantize "
                         "int8: use that or drop them")
    architectures_ = job.model_config.get("architectures")
    if job.task == names.TASK_CAUSAL_LM and not architectures.is_causal_lm(architectures_):
        raise InputError(f"{job.path}: --task causal-lm needs a causal language model (config.json architectures "
                         f"ending in {' or '.join(architectures.CAUSAL_LM_SUFFIXES)}); {architectures_ or 'this model'} "
                         "has no LM head to export: use --task features, classification or regression")


def write(job: ExportJob, tmp: Path):
    """Export, verify and write the bundle into the (temporary) folder `tmp`: graphs, side files, then the manifest."""
    c = job.config
    job.say("loading the model and injecting the subspace")
    graph, reference = prepare_graphs(job.path, job.subspace, job.coeffs, job.task, job.labels, c.per_example, c.merge)
    side = _write_side_files(tmp, job.path, graph, job.coeffs_path, job.coeffs)  # first: verifying reads the tokenizer
    side["sources"] = _copy_sources(job.subspace_path, job.subspace, tmp)
    files, checks, fusion = _write_models(tmp, graph, reference, c.exporter, c.quantize, c.ort_format,
                                          job.subspace.fingerprint, c.fused, job.say)
    if c.gradient and _has_gradient(graph, files):
        job.say("exporting the gradient graph (model.grad.onnx, checked against autograd)")
    grads = _write_gradient(tmp, graph) if c.gradient and _has_gradient(graph, files) else None
    if grads is not None:
        side["gradient"] = grads["file"]
    manifest = _build_manifest(graph, job.subspace, job.path, job.coeffs_path, c.exporter, {**files, **side}, checks)
    if fusion is not None:
        manifest["fusion"] = fusion
    if grads is not None:
        manifest["gradient"] = grads
    write_manifest(tmp, manifest)


def prepare_graphs(path: Path, subspace: Subspace, coeffs, task: str, labels: int, per_example: bool, merge: bool):
    """(graph, reference): the same Prepared unless merged, where the reference is the unmerged user model."""
    reference = g.prepare(*g.load_task_model(path, task, labels), subspace, coeffs, task, per_example and not merge)
    if not merge:
        return reference, reference
    model, _ = g.load_task_model(path, task, labels)
    return g.prepare_merged(model, subspace, coeffs, task), reference


def save_model(model: onnx.ModelProto, path: Path) -> list:
    """Write the proto; weights inline unless over INLINE_LIMIT. Returns the file names written."""
    size = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer)
    if size <= INLINE_LIMIT:
        onnx.save_model(model, str(path))
        return [path.name]
    data = path.name + names.EXTERNAL_DATA_SUFFIX
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return [path.name, data]


def build_onnx(prepared: g.Prepared, exporter: str, meta: dict) -> onnx.ModelProto:
    """torch -> proto, then the passes: dim names, node names, input defaults, metadata; checked in full."""
    proto = g.export_onnx(prepared, g.sample_tokens(prepared.wrapper.model.config.vocab_size), exporter)
    proto = passes.name_dims(proto, prepared.spec)
    proto = passes.add_input_defaults(passes.name_nodes(proto), prepared.defaults)
    proto = passes.set_metadata(proto, meta)
    missing = [n for n in prepared.spec.feed_names if n not in {i.name for i in proto.graph.input}]
    if missing:
        raise RuntimeError(f"the exporter folded coefficient inputs away (e.g. {missing[0]}); nothing written")
    return proto


def _verify_tokens(path: Path, vocab_size: int) -> dict:
    """Token inputs for the parity checks, shaped unlike the trace: the bundle's tokenizer if any, else seeded ids."""
    if (path / names.TOKENIZER_FILE).is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / names.TOKENIZER_FILE))
        tok.enable_padding()
        enc = tok.encode_batch(list(VERIFY_TEXTS))
        return {names.INPUT_IDS: np.array([e.ids for e in enc], np.int64),
                names.ATTENTION_MASK: np.array([e.attention_mask for e in enc], np.int64)}
    return g.sample_tokens(vocab_size, batch=3, seq=11, seed=1)


@contextlib.contextmanager
def quiet():
    """ONNX Runtime's logger at ERROR and Python logging up to WARNING muted (the quantizer's advice), then restored."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        onnxruntime.set_default_logger_severity(2)


def _to_ort_format(onnx_path: Path) -> Path:
    """ORT-format model beside the .onnx (optimizations fixed at conversion); the operator config is dropped."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    out = onnx_path.with_suffix(names.ORT_SUFFIX)
    with tempfile.TemporaryDirectory(dir=onnx_path.parent) as scratch, contextlib.redirect_stdout(io.StringIO()):
        convert_onnx_models_to_ort(onnx_path, output_dir=Path(scratch), optimization_styles=[OptimizationStyle.Fixed])
        shutil.move(str(Path(scratch) / out.name), out)
    return out


def _copy_tokenizer(path: Path, out: Path) -> list:
    """The model folder's tokenizer files, byte for byte; [] for a model without a tokenizer."""
    copied = []
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            shutil.copyfile(path / name, out / name)
            copied.append(name)
    return copied


def _write_models(tmp: Path, graph: g.Prepared, reference: g.Prepared, exporter: str, quantize, ort_format: bool,
                 fingerprint: str, fused: bool = False, say=lambda phase: None) -> tuple:
    """model.onnx (+ int8, + .ort, + fused), each checked against torch (fp32 and int8 first, before the .ort and
    fused variants and the gradient graph are made); returns ({variant: file}, {variant: check}, the manifest's
    `fusion` entry or None when not asked)."""
    meta = {"edge_lorax.fingerprint": fingerprint, "edge_lorax.mode": graph.spec.mode, "edge_lorax.task": graph.spec.task}
    fp32 = tmp / names.BUNDLE_MODEL
    say(f"exporting the fp32 graph ({exporter})")
    proto = build_onnx(graph, exporter, meta)
    written = save_model(proto, fp32)
    onnx.checker.check_model(str(fp32), full_check=True)
    tokens = _verify_tokens(tmp, graph.wrapper.model.config.vocab_size)
    models = {"fp32": fp32}
    say("verifying against torch" + (" and quantizing to int8" if quantize == "int8" else ""))
    with quiet():
        if quantize == "int8":
            models["int8"] = quantize_int8(fp32, tmp / names.BUNDLE_MODEL_INT8, graph.spec.feed_names)
    checks = {v: check_variant(v, p, graph, reference, tokens).as_dict() for v, p in models.items()}  # before the rest
    if ort_format or fused:
        say("writing " + " and ".join(w for w, on in ((".ort files", ort_format), ("the fused graph", fused)) if on))
    with quiet():
        if ort_format:
            models.update({("ort" if v == "fp32" else f"{v}_ort"): _to_ort_format(p) for v, p in list(models.items())})
        fusion = _write_fused(proto, graph, tmp / names.BUNDLE_MODEL_FUSED, len(written) > 1) if fused else None
    if fusion is not None and fusion["file"]:
        models["fused"] = tmp / fusion["file"]
    checks.update({v: check_variant(v, p, graph, reference, tokens).as_dict() for v, p in models.items() if v not in checks})
    files = {v: p.name for v, p in models.items()}
    if graph.spec.mode != names.MODE_SHARED:
        files[graph.spec.mode.replace("-", "_")] = fp32.name  # runtime variant keys: per_example, merged
    return {**files, "external_data": written[1:]}, checks, fusion


def _has_gradient(graph: g.Prepared, files: dict) -> bool:
    """A gradient graph serves shared classification / regression graphs whose weights fit one protobuf."""
    return graph.spec.task in g.HEAD_TASKS and graph.spec.mode == names.MODE_SHARED and not files["external_data"]


def _write_gradient(tmp: Path, graph: g.Prepared) -> dict:
    """model.grad.onnx (export/gradient.py), checked against torch autograd; its manifest entry."""
    tokens = _verify_tokens(tmp, graph.wrapper.model.config.vocab_size)
    path = tmp / names.BUNDLE_MODEL_GRADIENT
    with quiet():
        grad.save_gradient(grad.export_gradient(graph, tokens), path)
        check = grad.check_gradient(path, graph, tokens)
    loss = "mse" if graph.spec.task == names.TASK_REGRESSION else "cross_entropy"
    return {"file": path.name, "loss": loss, "labels": names.LABELS, "check": check}


def _write_fused(proto: onnx.ModelProto, graph: g.Prepared, path: Path, external: bool) -> dict:
    """model.fused.onnx (export/fuse.py) beside model.onnx; a graph that cannot be fused keeps only the unfused one
    and the manifest says why: {"file": name or None, "ops": {contrib op: count}, "reason": None or why not}."""
    cfg = graph.wrapper.model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)
    why = ("causal-LM graphs are not fused (causal attention)" if graph.spec.task == names.TASK_CAUSAL_LM else
           "weights in external data are not fused" if external else
           None if heads and hidden else "the model config names no attention heads / hidden size")
    if why is None:
        try:
            fused = fuse.fuse_attention(proto, int(heads), int(hidden))
        except fuse.FuseRefused as e:
            why = str(e)
    if why is not None:
        return {"file": None, "ops": {}, "reason": why}
    save_model(fused, path)
    return {"file": path.name, "ops": fuse.fused_ops(fused), "reason": None}


def _copy_sources(subspace_path: Path, subspace: Subspace, tmp: Path) -> str | None:
    """The subspace's sources.npz (the projected source adapters), checked, byte for byte; None when it has none."""
    src = subspace_path / SOURCES_FILE
    if not src.is_file():
        return None
    read_sources(src, subspace.fingerprint, subspace_shapes(subspace))
    shutil.copyfile(src, tmp / SOURCES_FILE)
    return SOURCES_FILE


def _write_side_files(tmp: Path, path: Path, graph: g.Prepared, coeffs_path, coeffs) -> dict:
    """Tokenizer files, config.json and the user's .onnx_adapter; returns their names for the manifest."""
    config = graph.wrapper.model.config.to_dict()
    config["architectures"] = [type(graph.wrapper.model).__name__]  # what the graph computes, not the checkpoint
    labels = (coeffs.meta.get("labels") if coeffs is not None else None) or []  # read_user: a list of names
    if len(labels) == config.get("num_labels", len(config.get("id2label", {}))):  # the user's task names its classes
        config["id2label"], config["label2id"] = {str(i): lab for i, lab in enumerate(labels)}, {lab: i for i, lab in enumerate(labels)}
    (tmp / names.BUNDLE_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    adapter = None
    if coeffs is not None and graph.spec.feeds:
        adapter = Path(coeffs_path).stem + names.ADAPTER_SUFFIX
        write_onnx_adapter({n: graph.defaults[n] for n in graph.spec.feed_names}, tmp / adapter, coeffs.fingerprint)
    side = {"tokenizer": _copy_tokenizer(path, tmp), "config": names.BUNDLE_CONFIG, "adapter": adapter}
    if graph.spec.task == names.TASK_FEATURES:
        side["sentence_transformers"] = _sentence_transformers_files(path, tmp, config)
    return side


def _sentence_transformers_files(path: Path, out: Path, config: dict) -> list:
    """What sentence-transformers reads beside the root model.onnx (its ONNX backend's default file, loaded with no
    extra argument): the model folder's own modules.json, configs and module folders (MiniLM: mean pooling, then
    Normalize) when its Transformer module sits at the root, else Transformer + mean Pooling (the `features` output).
    Returns the written paths, relative to the bundle."""
    written = []
    modules = _st_modules(path)
    if modules is not None:
        for name in ST_FILES:
            if (path / name).is_file():
                shutil.copyfile(path / name, out / name)
                written.append(name)
        for entry in modules:
            folder = path / entry["path"] if entry["path"] else None
            if folder is not None and folder.is_dir() and not folder.is_symlink():
                (out / entry["path"]).mkdir(parents=True, exist_ok=True)
                for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink()):
                    shutil.copyfile(f, out / entry["path"] / f.name)
                    written.append(f"{entry['path']}/{f.name}")
        return sorted(written)
    pooling = {"word_embedding_dimension": int(config["hidden_size"]), "pooling_mode_mean_tokens": True}
    files = {ST_MODULES: [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                          {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
             "sentence_bert_config.json": {"max_seq_length": int(min(512, config.get("max_position_embeddings") or 512)),
                                           "do_lower_case": False},
             "1_Pooling/config.json": pooling}
    (out / "1_Pooling").mkdir(exist_ok=True)
    for name, value in files.items():
        (out / name).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    return sorted(files)


def _st_modules(path: Path) -> list | None:
    """The model folder's modules.json when it is a list of modules whose Transformer sits at the root (where the
    bundle's model.onnx is), with relative module paths inside the folder; None otherwise (the default is written)."""
    if not (path / ST_MODULES).is_file():
        return None
    try:
        modules = json.loads((path / ST_MODULES).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("path"), str)
                                                and isinstance(m.get("type"), str) for m in modules):
        return None
    if not any(m["type"].endswith(".Transformer") and m["path"] == "" for m in modules):
        return None
    if any(Path(m["path"]).is_absolute() or ".." in Path(m["path"]).parts for m in modules):
        return None
    return modules


def _build_manifest(graph: g.Prepared, subspace: Subspace, path: Path, coeffs_path, exporter: str, files: dict,
                   checks: dict) -> dict:
    """The manifest.json content (schema: docs/formats.md, "Bundle manifest"); no times, so it is reproducible."""
    import onnxruntime
    import torch

    spec = graph.spec
    feeds = [{**s.as_dict(), "default": True} for s in spec.feeds]
    head = {s.name: list(s.shape) for s in spec.feeds if s.name.startswith(names.HEAD_PREFIX)}
    return {
        "target": TARGET_ENCODER, "fingerprint": subspace.fingerprint,
        "base_model": portable_model_id(path), "subspace_base_model": subspace.base_model,
        "task": spec.task, "mode": spec.mode, "user_inputs": feeds, "labels": spec.outputs[0].shape[-1] if spec.task in g.HEAD_TASKS else None,
        "pooling": "mean" if spec.task == names.TASK_FEATURES else None,
        "inputs": [s.as_dict() for s in spec.tokens] + feeds, "outputs": [s.as_dict() for s in spec.outputs],
        "coefficients": {s.name: list(s.shape) for s in spec.feeds if s.name in spec.coeff_names},
        "head": {"inputs": head, "default": graph.head_source} if (head or graph.head_source) else None,
        "defaults": Path(coeffs_path).name if coeffs_path else "zeros",
        "files": files, "tolerances": {v: TOLERANCES[v] for v in checks}, "tolerance_rule": TOLERANCE_RULE,
        "verification": checks,
        "exporter": {"name": exporter, "opset": g.OPSET, "edge_lorax": __version__, "torch": torch.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
