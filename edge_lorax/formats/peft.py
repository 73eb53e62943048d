"""Read and write PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors).

Reads lazily: `read_adapter` parses the config and the safetensors header only and accounts for every tensor in
the file: LoRA factors (2-D lora_A/lora_B of Linear and Conv1D layers) are used, one task head saved through
modules_to_save is carried (`read_head`), and anything else (trained biases, lora_bias B-biases, embedding LoRA,
unknown tensors) refuses the file with the list, so nothing is dropped silently. The config is cross-checked with
the tensors as PEFT would: r and rank_pattern against the tensor ranks, lora_alpha and alpha_pattern positive and
finite, pattern regexes valid, factors of a float dtype. `read_factors` memory-maps one module's A and B.

The config's choice of modules is checked against the tensors by PEFT's own rule (`peft_targets`, after
peft.tuners.tuners_utils.check_target_module_exists): target_modules as a list matches a name or a dotted suffix of
it, as a string is a full-match regex ("all-linear": every Linear / Conv1D but the output head), layers_to_transform
/ layers_pattern restrict the layer index, exclude_modules and modules_to_save keep PEFT off a module. Every module
the weights hold must be one PEFT targets; with the base model's module names (`ModelModules`, from a caller that
has the model) the weights must hold exactly the modules PEFT would create. Sharp edge: without the model, a config
that targets *more* than the tensors (e.g. `key` beside query/value) cannot be told from one naming modules the
model lacks, so it passes; PEFT would create those modules at their initial value (lora_B zero by default).
A config regex is matched only when its shape bounds the work (no repeat or alternation inside a repeat, at most 3
unbounded repeats, 1000 characters; module names under 200): a backtracking regex that would hang PEFT is refused.

Module names follow one rule (`name_variants`): PEFT's `base_model.model.` key prefix is optional in the file, and
two names denote the same layer when they differ only by the model's base_model_prefix (`bert.` of a task model vs
its bare backbone). Never unpickles: `.bin` adapters are refused with the conversion to run. Does not handle DoRA,
non-LoRA PEFT types, embedding or conv LoRA (all refused).
"""

import hashlib
import json
import math
import re

try:
    from re import _parser  # the regex parser (Python 3.11+), to bound a config regex's matching cost
except ImportError:  # Python 3.10
    import sre_parse as _parser
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge_lorax.formats.errors import InputError
from edge_lorax.formats.jsonfile import read_json_object
from edge_lorax.formats.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from edge_lorax.formats.safetensors_file import FLOAT_DTYPES, read_header, read_tensors
from edge_lorax.formats.user import head_tensors

PEFT_PREFIX = "base_model.model."
DEFAULT_R, DEFAULT_ALPHA = 8, 8  # LoraConfig's defaults: what PEFT uses when a config omits r or lora_alpha
FIX_CONFIG = "pass a folder written by PEFT's save_pretrained"
FIX_WEIGHTS = "re-save the adapter with PEFT's save_pretrained(dir, safe_serialization=True)"
_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(?:\.default)?\.weight$")
_NOT_HELD = ((re.compile(r"\.lora_B(?:\.default)?\.bias$"), "lora_bias B-biases (lora_bias=True)"),
             (re.compile(r"\.lora_embedding_[AB](?:\.default)?$"), "embedding LoRA factors (lora_embedding_A/B)"),
             (re.compile(r"\.lora_magnitude_vector"), "DoRA magnitude vectors"),
             (re.compile(r"\.bias$"), "trained biases (bias='lora_only' or 'all')"))
_UNKNOWN = "tensors of no LoRA role (neither lora_A/lora_B nor a modules_to_save head)"
_FIX_UNHELD = ("retrain with bias='none', lora_bias=False and Linear/Conv1D target modules only "
               "(or delete tensors that were never trained)")
_TYPES = {"base_model_name_or_path": ((str, type(None)), "a string"), "fan_in_fan_out": ((bool,), "true or false"),
          "use_rslora": ((bool,), "true or false"), "modules_to_save": ((list, type(None)), "a list of module names"),
          "rank_pattern": ((dict, type(None)), "an object"), "alpha_pattern": ((dict, type(None)), "an object"),
          "target_modules": ((str, list, type(None)), "a list of module names or a regex string"),
          "exclude_modules": ((str, list, type(None)), "a list of module names or a regex string"),
          "layers_to_transform": ((int, list, type(None)), "a layer index or a list of them"),
          "layers_pattern": ((str, list, type(None)), "a name or a list of names"),
          "task_type": ((str, type(None)), "a string")}
_NAME_LISTS = ("modules_to_save", "target_modules", "exclude_modules", "layers_pattern")  # lists of strings when lists
ALL_LINEAR = "all-linear"  # PEFT's shorthand (compared case-insensitively): every Linear / Conv1D but the output head
_TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}
_UNSUPPORTED = {"target_parameters": "LoRA on raw parameters (target_parameters)",
                "layer_replication": "replicated layers (layer_replication)"}
_FIX_TARGETS = f"fix {ADAPTER_CONFIG} to name the modules the weights hold, or re-save the adapter with PEFT"
_REPEAT_OPS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
MAX_REPEATS, MAX_NAME, MAX_PATTERN = 3, 200, 1000  # regex shape, name and regex length: ~0.03 s a match at most


class AdapterError(InputError):
    """Bad adapter input; the message names the file and the fix."""


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    base_model: str
    modules: tuple[str, ...]  # target module names, sorted, without the PEFT prefix
    ranks: dict  # module -> r
    scalings: dict  # module -> lora scaling (alpha/r or alpha/sqrt(r))
    shapes: dict  # module -> (out, in)
    fan_in_fan_out: bool
    sha256: str
    keys: dict = field(default_factory=dict)  # module -> (lora_A key, lora_B key) in the weights file
    head: dict = field(default_factory=dict)  # "weight" [, "bias"] -> key of the one saved task head ({}: none)
    head_module: str = ""  # that head's module name, e.g. "classifier"
    tensors: int = 0  # tensors in the file: every one is a factor in `keys` or a head tensor in `head`

    @property
    def weights(self) -> Path:
        return self.path / ADAPTER_WEIGHTS


def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    """PEFT's rule, the only one used here: alpha/sqrt(r) with rslora, else alpha/r."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches the module name or any dotted suffix of it."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def file_sha256(path: Path) -> str:
    """Content hash, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- module names: one rule

def name_variants(name: str, prefix: str) -> tuple:
    """THE module-name rule of every command: `name` as given, without, or with the model's base_model_prefix
    (`bert.encoder.layer.0...` of BertForSequenceClassification is `encoder.layer.0...` of BertModel)."""
    if not prefix:
        return (name,)
    return (name, name.removeprefix(prefix + "."), f"{prefix}.{name}")


def resolve_module(name: str, available, prefix: str) -> str | None:
    """The name in `available` that `name` denotes under the rule, or None."""
    return next((c for c in name_variants(name, prefix) if c in available), None)


def _prefixes(*sides) -> list:
    """Candidate base_model_prefixes when no model is at hand: none, or a first component shared by all of a side."""
    out = [""]
    for names in sides:
        heads = {n.partition(".")[0] for n in names}
        if len(heads) == 1 and all("." in n for n in names):
            out.append(heads.pop())
    return out


def _mapping(have, want: set, prefix: str) -> dict:
    return {h: resolve_module(h, want, prefix) for h in sorted(have)}


def align_modules(have, want) -> dict | None:
    """{name in have: name in want} when both sets name the same layers under the rule (one prefix for all), else
    None. No model is needed: the prefix is the first component one side shares and the other lacks."""
    want = set(want)
    for prefix in _prefixes(have, want):
        mapping = _mapping(have, want, prefix)
        if set(mapping.values()) == want and len(mapping) == len(want):
            return mapping
    return None


def module_difference(have, want, have_name: str, want_name: str) -> str:
    """Which modules differ, naming the first on each side (after the naming rule); for one-line refusals."""
    want = set(want)
    mapping = max((_mapping(have, want, p) for p in _prefixes(have, want)),
                  key=lambda m: sum(v is not None for v in m.values()))
    extra = [h for h, w in mapping.items() if w is None]
    missing = sorted(want - set(mapping.values()))
    parts = [f"{len(extra)} module(s) of {have_name} not in {want_name} (first: {extra[0]})"] if extra else []
    parts += [f"{len(missing)} module(s) of {want_name} not in {have_name} (first: {missing[0]})"] if missing else []
    return ", ".join(parts) or "the same modules twice under two names"


def renamed(info: AdapterInfo, mapping: dict) -> AdapterInfo:
    """The same adapter with its modules called by `mapping` ({own name: new name}); the file keys stay."""
    def move(d):
        return {mapping[m]: v for m, v in d.items()}

    return replace(info, modules=tuple(sorted(mapping.values())), ranks=move(info.ranks), scalings=move(info.scalings),
                   shapes=move(info.shapes), keys=move(info.keys))


# --------------------------------------------------------------------------------------------------- the config

def _read_config(path: Path) -> dict:
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise AdapterError(f"{path}: no {ADAPTER_CONFIG}; {FIX_CONFIG}")
    cfg = read_json_object(cfg_path, FIX_CONFIG, AdapterError)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type {cfg.get('peft_type')} is not LORA; only LoRA adapters can be recycled")
    if cfg.get("use_dora"):
        raise AdapterError(f"{cfg_path}: DoRA adapter (use_dora=true); its magnitude vector has no place in a LoRA subspace, use plain LoRA")
    _check_types(cfg_path, cfg)
    _check_rank(cfg_path, "r", cfg.get("r", DEFAULT_R))
    _check_alpha(cfg_path, "lora_alpha", cfg.get("lora_alpha", DEFAULT_ALPHA))
    _check_patterns(cfg_path, cfg)
    _check_target_keys(cfg_path, cfg)
    return cfg


def _check_types(cfg_path: Path, cfg: dict):
    """The keys this reader uses hold what PEFT writes (a string "false" is not false)."""
    for key, (types, what) in _TYPES.items():
        if key in cfg and not isinstance(cfg[key], types):
            raise AdapterError(f"{cfg_path}: {key} is {json.dumps(cfg[key])[:60]}, not {what}; fix it or re-save with PEFT")
    for key in _NAME_LISTS:
        if isinstance(cfg.get(key), list) and not all(isinstance(m, str) for m in cfg[key]):
            raise AdapterError(f"{cfg_path}: {key} must list module names (strings); fix it or re-save with PEFT")
    layers = cfg.get("layers_to_transform")
    if not all(_is_index(i) for i in (layers if isinstance(layers, list) else [] if layers is None else [layers])):
        raise AdapterError(f"{cfg_path}: layers_to_transform is {json.dumps(layers)[:60]}, not a layer index or a list "
                           "of them (integers >= 0); fix it or re-save with PEFT")


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_rank(cfg_path: Path, key: str, value):
    if not (_is_number(value) and isinstance(value, int) and value > 0):
        raise AdapterError(f"{cfg_path}: {key} {json.dumps(value)[:40]} is not a positive integer (PEFT refuses it); "
                           "set it to the rank of the lora_A tensors")


def _check_alpha(cfg_path: Path, key: str, value):
    fix = "set the lora_alpha the adapter was trained with"
    if not (_is_number(value) and math.isfinite(value)):
        raise AdapterError(f"{cfg_path}: {key} {json.dumps(value)[:40]} is not a finite number; {fix}")
    if value < 0:
        raise AdapterError(f"{cfg_path}: {key} {value} is negative (PEFT's scaling alpha/r would flip ΔW's sign); {fix}")
    if value == 0:
        raise AdapterError(f"{cfg_path}: {key} is 0, so ΔW = 0: a degenerate adapter that changes nothing; {fix}")


def _check_patterns(cfg_path: Path, cfg: dict):
    """rank_pattern / alpha_pattern: valid regexes (PEFT compiles them) with valid values."""
    for name, check in (("rank_pattern", _check_rank), ("alpha_pattern", _check_alpha)):
        for key, value in (cfg.get(name) or {}).items():
            try:
                re.compile(rf"(.*\.)?({key})$")
            except re.error as e:
                raise AdapterError(f"{cfg_path}: {name} key {key!r} is not a valid regular expression ({e}); "
                                   "fix or remove it") from e
            check(cfg_path, f"{name}[{key!r}]", value)


# ------------------------------------------------------------------------------- the config's modules: PEFT's rule

@dataclass(frozen=True)
class ModelModules:
    """The base model's module names as PEFT matches them (`named_modules()` of the model the adapter loads onto) and
    the ones `all-linear` takes (Linear / Conv1D less the output head); built by a caller that has the model."""

    names: tuple
    linear: frozenset = frozenset()


def _check_target_keys(cfg_path: Path, cfg: dict):
    """What LoraConfig refuses or this reader cannot follow, from the config alone; every regex compiles."""
    for key, what in _UNSUPPORTED.items():
        if cfg.get(key):
            raise AdapterError(f"{cfg_path}: {what} is not a Linear/Conv1D LoRA a ΔW subspace holds; retrain without {key}")
    if isinstance(cfg.get("target_modules"), str) and (cfg.get("layers_to_transform") is not None or
                                                       cfg.get("layers_pattern") is not None):
        raise AdapterError(f"{cfg_path}: target_modules is a regex string, so layers_to_transform / layers_pattern "
                           "cannot apply (PEFT refuses the config); put the layer into the regex or list target_modules")
    if cfg.get("layers_pattern") and cfg.get("layers_to_transform") is None:
        raise AdapterError(f"{cfg_path}: layers_pattern without layers_to_transform (PEFT refuses the config); "
                           "set layers_to_transform or remove layers_pattern")
    for key, value, pattern in _regexes(cfg):
        try:
            costly = _costly(value, pattern)
        except re.error as e:
            raise AdapterError(f"{cfg_path}: {key} {value[:60]!r} is not a valid regular expression ({e}); "
                               "fix or remove it") from e
        if costly:
            raise AdapterError(f"{cfg_path}: {key} {value[:60]!r} is too costly to match safely ({costly}); list the "
                               "module names instead")


def _regexes(cfg: dict) -> list:
    """(config key, the entry, the regex PEFT builds from it) for every entry PEFT matches as a regex."""
    out = [(k, cfg[k], cfg[k]) for k in ("target_modules", "exclude_modules") if isinstance(cfg.get(k), str)]
    patterns = cfg.get("layers_pattern") or []
    out += [("layers_pattern", p, rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.")
            for p in ([patterns] if isinstance(patterns, str) else patterns)]
    return out + [("modules_to_save", m, rf"(^|.*\.){m}($|\..*)") for m in _saved_names(cfg)]


def _costly(value: str, pattern: str) -> str:
    """Why matching `pattern` (built from the config's `value`) could take hours, or "" (re.error if invalid)."""
    repeats, nested = _repeats(_parser.parse(pattern))
    if nested:
        return "a repeat or an alternation inside a repeat"
    if repeats > MAX_REPEATS:
        return f"{repeats} unbounded repeats with PEFT's own, at most {MAX_REPEATS}"
    return f"{len(value)} characters, at most {MAX_PATTERN}" if len(value) > MAX_PATTERN else ""


def _children(av):
    """The sub-patterns inside one parsed regex item's argument."""
    for item in av if isinstance(av, (tuple, list)) else (av,):
        if isinstance(item, _parser.SubPattern):
            yield item
        elif isinstance(item, (tuple, list)):
            yield from _children(item)


def _repeats(sub, inside: bool = False) -> tuple:
    """(unbounded repeats, whether a repeat or an alternation sits inside a repeat) of a parsed regex: the shapes
    whose backtracking grows exponentially (nesting) or as length**repeats, so a config could hang the reader."""
    count, nested = 0, False
    for op, av in sub:
        repeat = str(op) in _REPEAT_OPS and av[1] > 1
        nested = nested or (inside and (repeat or str(op) == "BRANCH"))
        for child in _children(av):
            c, n = _repeats(child, inside or repeat)
            count, nested = count + c, nested or n
        count += repeat and av[1] == _parser.MAXREPEAT
    return count, nested


def _saved_names(cfg: dict) -> list:
    """modules_to_save as PEFT uses it: the config's, plus the task head names its task model class adds."""
    return list(cfg.get("modules_to_save") or []) + list(_TASK_HEADS.get(cfg.get("task_type"), ()))


def _listed(names, key: str) -> bool:
    """PEFT's list rule: `key` is a listed name or ends with "." + one."""
    return key in names or any(key.endswith("." + n) for n in names)


def _layer_index(cfg: dict, key: str) -> int | None:
    """The layer index PEFT reads from `key`: the first numbered segment, or the one after a layers_pattern name."""
    patterns = cfg.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        found = (re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
                 for p in ([patterns] if isinstance(patterns, str) else patterns))
        match = next((m for m in found if m), None)
    return int(match["idx"]) if match else None


def _in_layers(cfg: dict, key: str) -> bool:
    """layers_to_transform (an index or a list; None or [] means every layer) admits `key`'s layer."""
    layers = cfg.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = _layer_index(cfg, key)
    return index is not None and index in (layers if isinstance(layers, list) else [layers])


def refusing_key(cfg: dict, key: str, linear=None) -> str | None:
    """The config key that keeps PEFT from putting LoRA on module `key`, or None when PEFT targets it
    (check_target_module_exists + all-linear). linear: the model's all-linear names; None: unknown, so all-linear
    admits every module."""
    excluded = cfg.get("exclude_modules")
    if excluded and (re.fullmatch(excluded, key) if isinstance(excluded, str) else _listed(excluded, key)):
        return "exclude_modules"
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in _saved_names(cfg)):
        return "modules_to_save"
    targets = cfg.get("target_modules")
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        return None if linear is None or key in linear else "target_modules"
    if isinstance(targets, str):
        return None if re.fullmatch(targets, key) else "target_modules"
    if key in targets:  # PEFT: a full name listed is taken whatever layers_to_transform says
        return None
    if not _listed(targets, key):
        return "target_modules"
    return None if _in_layers(cfg, key) else ("layers_pattern" if _layer_index(cfg, key) is None else "layers_to_transform")


def peft_targets(cfg: dict, model: ModelModules) -> list:
    """The modules of `model` PEFT puts LoRA on under this config, in the model's order."""
    return [n for n in model.names if n and refusing_key(cfg, n, model.linear) is None]


def _config_value(cfg: dict, key: str) -> str:
    """The key's value as the refusal shows it; modules_to_save with the heads its task_type adds."""
    if key == "modules_to_save" and cfg.get("task_type") in _TASK_HEADS:
        return f"{json.dumps(_saved_names(cfg))[:80]} (with task_type {cfg['task_type']}'s heads)"
    return json.dumps(cfg.get(key), sort_keys=True)[:80]


def _check_targets(cfg_path: Path, cfg: dict, modules, model: ModelModules | None):
    """The weights hold exactly the modules PEFT would create from the config (model given), or at least only
    modules the config targets (model unknown); one line naming the config key and the first module that differs."""
    if cfg.get("target_modules") is None:
        leaves = sorted({m.rsplit(".", 1)[-1] for m in modules})
        raise AdapterError(f"{cfg_path}: no target_modules, so PEFT would pick its own default modules for the base "
                           f"model, not necessarily the {len(modules)} the weights hold; set target_modules, e.g. {leaves}")
    long = next((m for m in modules if len(m) > MAX_NAME), None)
    if long:
        raise AdapterError(f"{cfg_path.parent / ADAPTER_WEIGHTS}: module name of {len(long)} characters ({long[:60]}...); "
                           f"module names of a model are under {MAX_NAME}: {FIX_WEIGHTS}")
    if model is not None:
        return _check_exact(cfg_path, cfg, modules, model)
    for module in modules:
        key = refusing_key(cfg, module)
        if key:
            raise AdapterError(f"{cfg_path}: {key} {_config_value(cfg, key)} does not take module {module}, which the "
                               "weights hold, so PEFT would load a different adapter from this folder; " + _FIX_TARGETS)


def _check_exact(cfg_path: Path, cfg: dict, modules, model: ModelModules):
    want = peft_targets(cfg, model)
    if align_modules(modules, want) is None:
        keys = [k for k in ("target_modules", "layers_to_transform", "layers_pattern", "exclude_modules")
                if cfg.get(k) not in (None, [], "")]
        said = ", ".join(f"{k} {_config_value(cfg, k)}" for k in keys)
        raise AdapterError(f"{cfg_path}: {said} select {len(want)} module(s) of the base model, the weights hold "
                           f"{len(modules)} ({module_difference(modules, want, 'the weights', 'the config')}), so PEFT "
                           "would load a different adapter from this folder; " + _FIX_TARGETS)


# -------------------------------------------------------------------------------------------------- the tensors

def _weights_file(path: Path) -> Path:
    weights = path / ADAPTER_WEIGHTS
    if weights.is_file():
        return weights
    if (path / "adapter_model.bin").is_file():
        raise AdapterError(f"{path / 'adapter_model.bin'}: pickled weights are never loaded; convert with "
                           "`PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)`")
    raise AdapterError(f"{path}: no {ADAPTER_WEIGHTS}; {FIX_CONFIG}")


def _split_keys(weights: Path, header: dict) -> tuple:
    """({module: {"A": key, "B": key}}, {name without the PEFT prefix: key} of every other tensor)."""
    factors, rest = {}, {}
    for key in header:
        name = key.removeprefix(PEFT_PREFIX)
        m = _FACTOR.match(name)
        sides = factors.setdefault(m["module"], {}) if m else rest
        slot = m["side"] if m else name
        if slot in sides:
            raise AdapterError(f"{weights}: {name} is stored twice (with and without {PEFT_PREFIX!r}); {FIX_WEIGHTS}")
        sides[slot] = key
    return factors, rest


def _saved_module(name: str, saved) -> tuple | None:
    """(module, leaf) when `name` lies in a modules_to_save module (PEFT matches the name or a dotted suffix)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        module = ".".join(parts[:i])
        if any(module == s or module.endswith("." + s) for s in saved):
            return module, ".".join(parts[i:])
    return None


def _head(weights: Path, rest: dict, header: dict, saved) -> tuple:
    """(module, {"weight": key[, "bias": key]}) of the one Linear task head saved via modules_to_save, or ("", {})."""
    groups = {}
    for name, key in rest.items():
        found = _saved_module(name, saved)
        if found:
            groups.setdefault(found[0], {})[found[1]] = key
    if not groups:
        return "", {}
    module, head = sorted(groups.items())[0]
    if len(groups) > 1 or not _is_linear(head, header):
        listed = ", ".join(f"{m}.{leaf}" for m, g in sorted(groups.items()) for leaf in sorted(g))[:200]
        raise AdapterError(f"{weights}: modules_to_save holds {listed}, not one Linear task head (weight (labels, in) "
                           "and bias); a user carries exactly one head: save only the classifier")
    return module, head


def _is_linear(head: dict, header: dict) -> bool:
    """weight (labels, in) [+ bias (labels,)], floating point."""
    if not {"weight"} <= set(head) <= {"weight", "bias"}:
        return False
    (w_dtype, w_shape), (b_dtype, b_shape) = header[head["weight"]], header.get(head.get("bias"), ("F32", None))
    return (w_dtype in FLOAT_DTYPES and b_dtype in FLOAT_DTYPES and len(w_shape) == 2
            and b_shape in (None, (w_shape[0],)))


def _refuse_unheld(weights: Path, names: list):
    """Every tensor is used or the file is refused, listing by kind what a ΔW subspace cannot hold."""
    if not names:
        return
    kinds = {}
    for name in sorted(names):
        kinds.setdefault(next((what for p, what in _NOT_HELD if p.search(name)), _UNKNOWN), []).append(name)
    listing = "; ".join(f"{what}: {len(ns)} ({ns[0]}{', ...' if len(ns) > 1 else ''})" for what, ns in kinds.items())
    raise AdapterError(f"{weights}: {len(names)} tensor(s) a ΔW subspace cannot hold, refused rather than dropped "
                       f"- {listing}; {_FIX_UNHELD}")


def _check_factor(weights: Path, key: str, dtype: str, shape: tuple):
    if dtype not in FLOAT_DTYPES:
        raise AdapterError(f"{weights}: {key} is {dtype}; integer or quantized LoRA weights are not a PEFT LoRA, "
                           "save the float factors (dequantize first)")
    if len(shape) != 2:
        raise AdapterError(f"{weights}: {key} has shape {list(shape)}; only Linear/Conv1D LoRA (2-D factors) can be "
                           "recycled, not conv LoRA")


def _module_entry(weights: Path, cfg: dict, module: str, sides: dict, header: dict) -> tuple:
    """(r, (out, in), scaling) of one module, its tensors checked against each other and the config."""
    if set(sides) != {"A", "B"}:
        raise AdapterError(f"{weights}: module {module} has only lora_{''.join(sides)}; {FIX_WEIGHTS}")
    for key in sides.values():
        _check_factor(weights, key, *header[key])
    shape_a, shape_b = header[sides["A"]][1], header[sides["B"]][1]
    if shape_a[0] != shape_b[1]:
        raise AdapterError(f"{weights}: module {module} has lora shapes {{'A': {shape_a}, 'B': {shape_b}}}; "
                           "A must be (r, in) and B (out, r)")
    r, want = shape_a[0], pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", DEFAULT_R))
    if r != want:
        raise AdapterError(f"{weights}: module {module} has rank-{r} lora_A/lora_B but {ADAPTER_CONFIG} says r={want}; "
                           f"PEFT refuses to load it (size mismatch): set r (or rank_pattern) to {r}")
    alpha = pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", DEFAULT_ALPHA))
    return r, (shape_b[0], shape_a[1]), lora_scaling(alpha, r, cfg.get("use_rslora", False))


def read_adapter(path, model: ModelModules | None = None) -> AdapterInfo:
    """Config + header only; every tensor is accounted for (factor, carried head) or the folder is refused, and the
    config's target modules agree with the tensors (exactly, when `model` gives the base model's module names)."""
    path = Path(path)
    cfg = _read_config(path)
    weights = _weights_file(path)
    header = read_header(weights, FIX_WEIGHTS, AdapterError)
    factors, rest = _split_keys(weights, header)
    if not factors:
        raise AdapterError(f"{weights}: no lora_A/lora_B weights; is this a LoRA adapter saved by PEFT?")
    _check_targets(path / ADAPTER_CONFIG, cfg, sorted(factors), model)
    head_module, head = _head(weights, rest, header, cfg.get("modules_to_save") or [])
    _refuse_unheld(weights, sorted(set(rest) - {k.removeprefix(PEFT_PREFIX) for k in head.values()}))
    entries = {m: _module_entry(weights, cfg, m, sides, header) for m, sides in sorted(factors.items())}
    return AdapterInfo(path, cfg.get("base_model_name_or_path") or "", tuple(entries),
                       {m: e[0] for m, e in entries.items()}, {m: e[2] for m, e in entries.items()},
                       {m: e[1] for m, e in entries.items()}, bool(cfg.get("fan_in_fan_out", False)),
                       file_sha256(weights), {m: (s["A"], s["B"]) for m, s in factors.items()}, head, head_module,
                       len(header))


def read_factors(info: AdapterInfo, module: str) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) in float64 with sqrt(scaling) folded into each, so B @ A is the adapter's full ΔW (out, in)."""
    a_key, b_key = info.keys[module]
    tensors = read_tensors(info.weights, (a_key, b_key), FIX_WEIGHTS, AdapterError)
    A, B = tensors[a_key].astype(np.float64), tensors[b_key].astype(np.float64)  # (r, in), (out, r)
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise AdapterError(f"{info.weights}: NaN or Inf in {module}; retrain or drop this adapter")
    root = math.sqrt(info.scalings[module])
    return A * root, B * root


def read_head(info: AdapterInfo) -> dict:
    """The carried task head as user tensors (head.weight_t (in, labels), head.bias; a missing bias is zeros), or {}."""
    if not info.head:
        return {}
    tensors = read_tensors(info.weights, tuple(info.head.values()), FIX_WEIGHTS, AdapterError)
    weight, bias = tensors[info.head["weight"]], tensors.get(info.head.get("bias"))
    if not (np.isfinite(weight).all() and (bias is None or np.isfinite(bias).all())):
        raise AdapterError(f"{info.weights}: NaN or Inf in the saved head {info.head_module}; retrain or drop it")
    return head_tensors(weight.astype(np.float32), None if bias is None else bias.astype(np.float32))


def delta_weight(info: AdapterInfo, module: str) -> np.ndarray:
    """ΔW (out, in) as PEFT merges it (before any fan_in_fan_out transpose)."""
    A, B = read_factors(info, module)
    return B @ A  # (out, in)


def write_adapter(path, factors: dict, base_model: str, *, fan_in_fan_out=False, extra: dict | None = None,
                  modules_to_save=None, task_type=None, overwrite=False, dtype=np.float32) -> Path:
    """A PEFT LoRA folder from {module: (A (r, in), B (out, r))} with scaling 1 (lora_alpha = r per module);
    tensors stored as `dtype` (float32, float16; what PEFT saves for a half-precision model)."""
    from safetensors.numpy import save_file

    from edge_lorax.formats.atomic import atomic_dir

    ranks = {m: int(a.shape[0]) for m, (a, _) in factors.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    tensors = {}
    for m, (a, b) in factors.items():
        tensors[f"{PEFT_PREFIX}{m}.lora_A.weight"] = np.ascontiguousarray(a, dtype)
        tensors[f"{PEFT_PREFIX}{m}.lora_B.weight"] = np.ascontiguousarray(b, dtype)
    tensors.update({f"{PEFT_PREFIX}{k}": np.ascontiguousarray(v, dtype) for k, v in (extra or {}).items()})
    pattern = {f"^{re.escape(m)}": v for m, v in ranks.items() if v != r}  # anchored: PEFT matches suffixes
    config = {"peft_type": "LORA", "base_model_name_or_path": base_model, "r": r, "lora_alpha": r,
              "rank_pattern": pattern, "alpha_pattern": pattern, "target_modules": sorted(factors),
              "fan_in_fan_out": fan_in_fan_out, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
              "use_dora": False, "modules_to_save": modules_to_save, "task_type": task_type, "inference_mode": True}
    with atomic_dir(path, overwrite) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(path)
