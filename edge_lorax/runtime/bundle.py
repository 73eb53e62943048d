"""Open an exported bundle folder as one ONNX Runtime session plus what the runtime needs to feed it.

Coefficient inputs (names, shapes, dtypes) are read from the session itself — every input or overridable
initializer that is not a token input or a decoder's KV-cache input — so the runtime never trusts a manifest over the
graph. The manifest gives the fingerprint, the files and the task. Does not tokenize or run (see infer.py) and does not
load users (users.py).
"""

import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_lorax.formats import names
from edge_lorax.formats.bundle import (
    TARGET_DECODER,
    TARGET_ENCODER,
    BundleError,
    bundle_file,
    check_target,
    check_types,
    read_manifest,
    resolve_inside,
)
from edge_lorax.formats.jsonfile import read_json_object

_OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
               "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
VARIANTS = tuple(names.BUNDLE_VARIANT_FILES)  # fp32, int8, ort, int8_ort, per_example, merged
MOBILE_ORDER = ("int8_ort", "int8", "ort", "fp32")  # smallest and fastest first; .ort loads without graph passes
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32}


@dataclass(frozen=True)
class SessionConfig:
    """How the session is built. threads=0: all usable cores (never more: oversubscribed ORT runs ~3x slower)."""

    threads: int = 0
    opt_level: str = "all"  # disable | basic | extended | all
    arena: bool = True  # CPU memory arena: faster repeated runs, holds its peak allocation
    variant: str = "fp32"  # model file: a VARIANTS key, or "mobile" (the first present of MOBILE_ORDER)
    spinning: bool = True  # intra-op threads spin between runs: lower latency, burns CPU while idle


PROFILES = {
    "default": SessionConfig(),
    "mobile": SessionConfig(threads=1, variant="mobile", arena=False, spinning=False),
    "server": SessionConfig(threads=0, variant="fp32"),
}


def usable_cores() -> int:
    """Cores this process may run on (affinity), the most threads a session should get."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session_options(config: SessionConfig) -> ort.SessionOptions:
    """SessionOptions for a config; intra-op threads capped at the usable cores, inter-op 1 (sequential)."""
    if config.opt_level not in _OPT_LEVELS:
        raise BundleError(f"opt_level must be one of {sorted(_OPT_LEVELS)}, got {config.opt_level!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = min(config.threads, usable_cores()) if config.threads > 0 else usable_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _OPT_LEVELS[config.opt_level]
    so.enable_cpu_mem_arena = config.arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spinning else "0")
    so.log_severity_level = 3
    return so


@dataclass(frozen=True)
class InputSpec:
    """One graph input: shape has None for symbolic dims; has_default when an initializer backs it (optional)."""

    name: str
    shape: tuple
    dtype: type
    has_default: bool

    @property
    def per_example(self) -> bool:
        """A leading symbolic (batch) dim: one row per example. Single-user graphs have static coefficient shapes."""
        return bool(self.shape) and self.shape[0] is None


def _spec(arg, has_default: bool) -> InputSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return InputSpec(arg.name, shape, _ORT_DTYPES.get(arg.type, np.float32), has_default)


def _served_manifest(path: Path, decoder: bool = False) -> dict:
    """The bundle's manifest (formats.bundle.read_manifest: every check, every target). A decoder (KV-cache) bundle is
    refused unless `decoder` (bundle_of_session: optimum's ORTModelForCausalLM runs its cache loop itself); `run` /
    `bench` cannot step a KV cache."""
    manifest = read_manifest(path)
    targets = (TARGET_ENCODER, TARGET_DECODER) if decoder else (TARGET_ENCODER,)
    check_target(path, manifest, targets, "this command serves encoder bundles (run, bench, personalize); generate with "
                                          f"`edge-lorax generate {path} PROMPT` (edge_lorax.runtime.llm)")
    return manifest


def _manifest_files(manifest: dict) -> dict:
    return manifest.get("files") or {}


def _model_file(path: Path, manifest: dict, variant: str) -> Path:
    """The model file for a variant: the manifest's `files` entry first, then the conventional name."""
    if variant == "mobile":
        for v in MOBILE_ORDER:
            if (found := _find_variant(path, manifest, v)) is not None:
                return found
    found = _find_variant(path, manifest, variant)
    if found is None:
        have = [v for v in VARIANTS if _find_variant(path, manifest, v) is not None]
        raise BundleError(f"{path}: no {variant} model in this bundle (has {', '.join(have) or 'none'}); "
                          f"re-export with the matching `edge-lorax export` option or pick another variant")
    return found


def _find_variant(path: Path, manifest: dict, variant: str):
    files = _manifest_files(manifest)
    candidates = [files.get(variant), files.get(f"model_{variant}"), names.BUNDLE_VARIANT_FILES.get(variant)]
    for rel in candidates:
        if isinstance(rel, str) and (path / rel).is_file():
            return _inside(path, rel)
    return None


def _inside(path: Path, rel: str) -> Path:
    """A manifest path (read_manifest has checked it stays inside the folder), resolved."""
    target = resolve_inside(path, rel, path / names.BUNDLE_MANIFEST)
    if target is None:
        raise BundleError(f"{path / names.BUNDLE_MANIFEST}: names {rel!r}, outside the bundle folder; re-export the bundle")
    return target


# The config.json keys the runtime reads (labels, pad id, vocabulary and position limits), with their JSON types.
_CONFIG_TYPES = {"id2label": (dict,), "pad_token_id": (int, type(None)), "vocab_size": (int,),
                 "type_vocab_size": (int,), "max_position_embeddings": (int,), "n_positions": (int,),
                 "model_type": (str,)}


def _read_bundle_config(path: Path) -> dict:
    """config.json of a bundle ({} when absent): a JSON object whose used keys have the right types."""
    cfg = bundle_file(path, names.BUNDLE_CONFIG)
    if cfg is None:
        return {}
    config = read_json_object(path / names.BUNDLE_CONFIG, "re-export the bundle", BundleError)
    check_types(path / names.BUNDLE_CONFIG, config, _CONFIG_TYPES, "re-export the bundle")
    return config


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: one session (thread-safe for concurrent runs), its token and coefficient inputs."""

    path: Path
    manifest: dict
    model_path: Path
    session: ort.InferenceSession = field(repr=False)
    config: SessionConfig
    token_inputs: tuple  # input_ids, attention_mask, token_type_ids: those the graph has, in graph order
    coeff_inputs: dict  # name -> InputSpec: every other input (coefficients and head tensors)
    outputs: tuple

    fingerprint: str  # the graph's own subspace fingerprint (its metadata), which the manifest must repeat
    kv_inputs: tuple = ()  # a decoder bundle's past_key_values.<i>.key / .value, in graph order: fed by its caller

    @property
    def per_example(self) -> bool:
        """True when coefficient inputs carry a leading batch dim (a mixed batch of users per run)."""
        return any(s.per_example for n, s in self.coeff_inputs.items() if n.endswith(names.COEFF_A))

    @cached_property
    def model_config(self) -> dict:
        """config.json of the bundle (labels, pad id, vocabulary, positions), {} when absent; checked when first read."""
        return _read_bundle_config(self.path)

    def with_variant(self, variant: str) -> "Bundle":
        """The same bundle folder opened on another model file (e.g. per_example for mixed batches)."""
        return open_bundle(self.path, replace(self.config, variant=variant))


def _inputs(session: ort.InferenceSession) -> tuple:
    """(token input names, {coefficient input name: InputSpec}, KV-cache input names) of the session's graph: a
    KV-cache input (names.KV_INPUT_PREFIX) is neither tokens nor a user's; every other input or overridable
    initializer that is not a token input is a coefficient (or head) input."""
    required = [_spec(a, False) for a in session.get_inputs()]
    optional = [_spec(a, True) for a in session.get_overridable_initializers()]
    tokens = tuple(s.name for s in required if s.name in names.TOKEN_INPUTS)
    kv = tuple(s.name for s in required if s.name.startswith(names.KV_INPUT_PREFIX))
    coeffs = {s.name: s for s in required + optional if s.name not in names.TOKEN_INPUTS and s.name not in kv}
    return tokens, coeffs, kv


def _fingerprint(path: Path, manifest: dict, session: ort.InferenceSession) -> str:
    """The subspace fingerprint the bundle serves: the manifest's (read_manifest requires one), which the graph's own
    (its `edge_lorax.fingerprint` metadata, when written by edge-lorax) must repeat."""
    meta = session.get_modelmeta().custom_metadata_map or {}
    inside, listed = meta.get("edge_lorax.fingerprint") or meta.get("fingerprint") or "", manifest["fingerprint"]
    if inside and inside != listed:
        raise BundleError(f"{path}: manifest fingerprint {listed} but the model was exported for {inside}; the folder "
                          "mixes two exports or was edited, re-export it")
    return listed


def _check_manifest_inputs(model: Path, manifest: dict, coeffs: dict):
    """The manifest's coefficient names and static dims must be the graph's own (symbolic dims match anything)."""
    listed = manifest.get("coefficients")
    if listed is None:
        return
    bad = next((n for n, shape in listed.items() if not isinstance(shape, list)
                or not all(d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool))
                           for d in shape)), None)
    if bad is not None:
        raise BundleError(f"{model.parent / names.BUNDLE_MANIFEST}: coefficients[{bad!r}] is not a list of dims; "
                          "re-export the bundle")
    graph = {n for n in coeffs if not n.startswith(names.HEAD_PREFIX)}
    if set(listed) != graph:
        odd = sorted(set(listed) ^ graph)[0]
        raise BundleError(f"{model}: manifest and graph disagree on coefficient inputs (e.g. {odd}); re-export the bundle")
    for name, shape in listed.items():
        want = tuple(d if isinstance(d, int) else None for d in shape)
        if len(want) != len(coeffs[name].shape) or any(w is not None and g is not None and w != g
                                                        for w, g in zip(want, coeffs[name].shape)):
            raise BundleError(f"{model}: {name} is {coeffs[name].shape} in the graph, {tuple(shape)} in the manifest; "
                              "re-export the bundle")


def open_bundle(path, config: SessionConfig | str = "default") -> Bundle:
    """Load a bundle folder once; `config` is a SessionConfig or a profile name ("default", "mobile", "server")."""
    path = Path(path)
    if isinstance(config, str):
        if config not in PROFILES:
            raise BundleError(f"unknown profile {config!r}; choose one of {', '.join(PROFILES)}")
        config = PROFILES[config]
    manifest = _served_manifest(path)
    model = _model_file(path, manifest, config.variant)
    try:
        session = ort.InferenceSession(str(model), session_options(config), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise BundleError(f"{model}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]}); re-export the bundle") from e
    return _bundle(path, manifest, model, session, config)


def _bundle(path: Path, manifest: dict, model: Path, session: ort.InferenceSession, config: SessionConfig) -> Bundle:
    fingerprint = _fingerprint(path, manifest, session)
    tokens, coeffs, kv = _inputs(session)
    _check_manifest_inputs(model, manifest, coeffs)
    if names.INPUT_IDS not in tokens:
        raise BundleError(f"{model}: no {names.INPUT_IDS} input; not an edge-lorax text model, re-export it")
    return Bundle(path, manifest, model, session, config, tokens, coeffs, tuple(o.name for o in session.get_outputs()),
                  fingerprint, kv)


def bundle_of_session(session: ort.InferenceSession, model_path) -> Bundle:
    """A Bundle around a session someone else opened on a bundle's model file (optimum's ORTModel, sentence-
    transformers): the same checks as open_bundle (manifest, fingerprint, inputs), no second session. A decoder
    (KV-cache) bundle is accepted here (optimum's ORTModelForCausalLM feeds the cache; its kv_inputs are listed)."""
    model = Path(model_path)
    path = model.parent
    return _bundle(path, _served_manifest(path, decoder=True), model, session, SessionConfig())
