"""`edge-lorax export`: the front door every export target shares; the bundle folder is written atomically.

Common to every target, refused before any work: an option of the wrong value or combination (--num-labels with a
task that has no classification head: it would be ignored), an existing or unwritable output (unless overwrite), a
--coeffs user of another subspace, of a larger shape or with out-of-range values (a lower K' or r' is zero-padded,
so the bundle keeps the subspace's input shapes and serves every user), a model whose id differs from the
subspace's base, an unreadable model config or tokenizer. What was read becomes one
`ExportJob` (export.config); `choose_target` picks its target (formats.bundle's TARGET_*: a causal LM whose model
type gets a KV cache in formats.architectures gets the decoder target, every other model the encoder's); the
target's `check(job)` refuses the options it does not offer (one line each), then its `write(job, tmp)` writes its
files and manifest (formats.bundle.write_manifest) into the atomic folder. Any failure, including a parity check,
Ctrl-C or SIGTERM, leaves nothing behind.

Targets (`TARGETS`): onnx-encoder -> export.encoder_bundle, genai-decoder -> export.llm_bundle, executorch ->
export.executorch_bundle (only when asked: ExportConfig.target, `--target executorch`).
How to add one (e.g. ExecuTorch): a module export/executorch_bundle.py with `check(job)` and `write(job, tmp)` (its
files, then write_manifest with `target` TARGET_EXECUTORCH and the ordered user_inputs a positional method binds), an
entry in TARGETS and a rule in `choose_target`; a new option (such as an explicit target) is a field of ExportConfig,
the one place options are declared, and only the targets that offer it accept it in their `check`.
Does not: build graphs, verify or write model files (the target modules do), benchmark or serve users
(edge_lorax.runtime does).
"""

from dataclasses import replace
from pathlib import Path

from edge_lorax.builder.models import check_base, resolve_model
from edge_lorax.export import encoder_bundle, executorch_bundle, llm_bundle
from edge_lorax.export import graph as g
from edge_lorax.export.config import ExportConfig, ExportJob
from edge_lorax.formats import architectures, names
from edge_lorax.formats.atomic import atomic_dir, check_output
from edge_lorax.formats.bundle import TARGET_DECODER, TARGET_ENCODER, TARGET_EXECUTORCH
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.jsonfile import read_json_object
from edge_lorax.formats.subspace import Subspace, read_subspace
from edge_lorax.formats.user import User, conform_user, read_user

__all__ = ["TARGETS", "ExportConfig", "choose_target", "export_bundle", "model_config", "read_job"]

QUANTIZE = ("int8", "int4")  # int4: decoder bundles only (the model builder's MatMulNBits)
# manifest target -> its module: check(job) refuses what it does not offer, write(job, tmp) writes the bundle
TARGETS = {TARGET_ENCODER: encoder_bundle, TARGET_DECODER: llm_bundle, TARGET_EXECUTORCH: executorch_bundle}


def export_bundle(model_path, subspace_path, out_dir, coeffs_path=None, config: ExportConfig = ExportConfig(),
                  progress=None, **options) -> Path:
    """Export, verify and write a bundle folder; returns its path (docs/formats.md, "Bundle manifest").
    `options`: ExportConfig fields by name (task="features"), replacing config's; a convenience for scripts and tests.
    config.gradient: also model.grad.onnx for a classification / regression bundle (`edge-lorax export` does by
    default; personalize's exact path needs it; ~30 s more on MiniLM). progress(phase): told as each long phase starts."""
    config = replace(config, **options) if options else config
    _check_config(config, coeffs_path)
    out_dir = check_output(out_dir, config.overwrite)
    job = replace(read_job(model_path, subspace_path, coeffs_path, config), progress=progress)
    name = choose_target(job)
    if config.max_cache_len is not None and not (name == TARGET_EXECUTORCH and job.task == names.TASK_CAUSAL_LM):
        raise InputError(f"--max-cache-len sets the KV cache of a decoder .pte (--target executorch on a causal LM); "
                         f"this export is {name} with --task {job.task}: drop it")
    target = TARGETS[name]
    target.check(job)
    with atomic_dir(out_dir, config.overwrite) as tmp:
        target.write(job, tmp)
    return out_dir


def _check_config(config: ExportConfig, coeffs_path):
    """Option values and combinations no target takes, refused before anything is read."""
    if config.merge and coeffs_path is None:
        raise InputError("--merge folds one user's ΔW into the weights; pass that user with --coeffs")
    if config.merge and config.per_example:
        raise InputError("--merge and --per-example exclude each other: a merged graph serves exactly one user")
    if config.quantize not in (None, *QUANTIZE):
        raise InputError(f"--quantize must be one of {QUANTIZE}, got {config.quantize!r}")
    if config.target not in (None, *TARGETS):
        raise InputError(f"--target must be one of {tuple(TARGETS)}, got {config.target!r}")
    if config.exporter not in g.EXPORTERS:
        raise InputError(f"exporter must be one of {g.EXPORTERS}, got {config.exporter!r}")
    if config.num_labels is not None and not (type(config.num_labels) is int and config.num_labels >= 1):
        raise InputError(f"--num-labels {config.num_labels!r}: a whole number of classes (2 or more) is needed")


def read_job(model_path, subspace_path, coeffs_path, config: ExportConfig) -> ExportJob:
    """What every target needs, read and checked before any work: the subspace, the --coeffs user (conformed), the
    model (its id, config.json, tokenizer), the task and its head's labels."""
    subspace = read_subspace(subspace_path)
    coeffs, path = _read_export_user(coeffs_path, subspace), resolve_model(model_path)
    if not config.allow_base_mismatch:
        check_base(path, subspace, "pass that model or --allow-base-mismatch if the weights really match")
    cfg = model_config(path)  # valid JSON object before any work (transformers would raise its own traceback)
    _check_tokenizer(path)
    task = config.task or _default_task(path, coeffs)
    if task not in names.TASKS:
        raise InputError(f"task must be one of {names.TASKS}, got {task!r}")
    _check_num_labels(task, config)
    labels = _num_labels_for(task, coeffs, config.num_labels, path)
    return ExportJob(path, cfg, subspace, Path(subspace_path), coeffs, coeffs_path, task, labels, config)


def choose_target(job: ExportJob) -> str:
    """The job's manifest target: executorch when asked (its check refuses what it cannot serve); else genai-decoder
    for a causal LM whose model type gets a KV cache (formats.architectures), else onnx-encoder (other causal LMs
    keep the cache-free logits graph). An explicit ONNX target other than that choice is refused in one line."""
    kv_cache = architectures.supports_kv_cache(job.model_config.get("model_type"))
    auto = TARGET_DECODER if job.task == names.TASK_CAUSAL_LM and kv_cache else TARGET_ENCODER
    asked = job.config.target
    if asked in (None, auto, TARGET_EXECUTORCH):
        return asked or auto
    raise InputError(f"--target {asked}: {job.path} ({job.model_config.get('model_type')}) with --task {job.task} is "
                     f"exported as {auto}; drop --target or pass --target {auto} (or {TARGET_EXECUTORCH} for an encoder)")


def _read_export_user(coeffs_path, subspace: Subspace) -> User | None:
    """The --coeffs file through the one validator: this subspace, every module, one user (2-D tensors), values in
    range; a lower K' or r' is zero-padded to the subspace's (K, r), so the bundle's inputs never take its shape."""
    if coeffs_path is None:
        return None
    user = read_user(coeffs_path)
    batched = next((k for k, v in user.coefficients.items() if v.ndim != 2), None)
    if batched:
        raise InputError(f"{coeffs_path}: {batched} is {tuple(user.coefficients[batched].shape)}; one user's (r, K) and "
                         "(K, r) are needed (per-example files are not exported), pass one user's file")
    return conform_user(user, subspace, coeffs_path)


def _default_task(path: Path, coeffs: User | None) -> str:
    """A head in the coefficients: regression (1 label) or classification; else causal-lm for LM checkpoints, else features."""
    if coeffs is not None and coeffs.head:
        labels = coeffs.head[names.HEAD_BIAS].shape[-1]
        return names.TASK_REGRESSION if labels == 1 else names.TASK_CLASSIFICATION
    causal = architectures.is_causal_lm(model_config(path).get("architectures"))
    return names.TASK_CAUSAL_LM if causal else names.TASK_FEATURES


def _check_num_labels(task: str, config: ExportConfig):
    """--num-labels sizes a classification head; any other task would ignore it (regression: 1 is consistent)."""
    n = config.num_labels
    if n is None or (task == names.TASK_REGRESSION and n == 1):
        return
    said = f"--task {task}" + ("" if config.task else " (the default here: no --task given)")
    if task != names.TASK_CLASSIFICATION:
        has = "one output" if task == names.TASK_REGRESSION else "no classification head"
        raise InputError(f"--num-labels {n} is for --task classification; {said} has {has}, so it would be ignored: "
                         "pass --task classification or drop --num-labels")
    if n < 2:
        raise InputError("--num-labels 1: a classification head needs 2 or more labels; for one output use --task regression")


def _num_labels_for(task: str, coeffs: User | None, num_labels: int | None, path: Path) -> int:
    """Labels of the head: the coefficients' head decides; regression needs 1; else the argument or config (2)."""
    if task not in g.HEAD_TASKS:
        return 0
    have = coeffs.head[names.HEAD_BIAS].shape[-1] if coeffs is not None and coeffs.head else None
    want = 1 if task == names.TASK_REGRESSION else (num_labels or have or _config_labels(path))
    if have is not None and have != want:
        raise InputError(f"the coefficients' head has {have} labels, task {task} needs {want}; pass the matching --task")
    return want


def model_config(path: Path) -> dict:
    """The model folder's config.json as a JSON object, or one line naming it."""
    return read_json_object(path / names.BUNDLE_CONFIG, "pass a Hugging Face model folder with a valid config.json")


def _config_labels(path: Path) -> int:
    cfg = model_config(path)
    id2label, num = cfg.get("id2label"), cfg.get("num_labels", 2)
    if id2label and isinstance(id2label, dict):
        return len(id2label)
    if type(num) is not int or num < 1:
        raise InputError(f"{path / names.BUNDLE_CONFIG}: num_labels {num!r} is not a positive integer; fix the config")
    return num


def _check_tokenizer(path: Path):
    """The model folder's tokenizer.json, when present, must load: it is copied into the bundle and verifies it."""
    if (path / names.TOKENIZER_FILE).is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(path / names.TOKENIZER_FILE))
        except Exception as e:  # tokenizers raises its own (Rust) exception types
            raise InputError(f"{path / names.TOKENIZER_FILE}: not a readable tokenizer "
                             f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); fix or remove it") from e
