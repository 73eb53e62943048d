"""A bundle's tokenizer files, read once: tokenizer.json (the `tokenizers` package) and tokenizer_config.json's
special tokens. The one place both the encoder runtime (infer.py) and generation (llm.py) read them.

Refuses, in one line naming the file: a tokenizer.json that does not load or encode, a tokenizer_config.json that is
not a JSON object or whose `*_token` entry is neither a string nor {"content": ...}, a file linking out of the
bundle. Does not pad, render chat templates (llm.py) or import transformers.
"""

from functools import lru_cache
from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.jsonfile import read_json_object
from edge_lorax.runtime.bundle import BundleError, bundle_file


def tokenizer_error(path, e: BaseException) -> BundleError:
    """A tokenizer.json that cannot be loaded or used: one line naming it (Ctrl-C and exits pass through)."""
    if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise e
    return BundleError(f"{path}: not a readable tokenizer ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                       "re-export the bundle (it copies the model's tokenizer)")


def load_tokenizer(folder, max_length: int | None = None):
    """The folder's tokenizer.json as a `tokenizers.Tokenizer`, truncating at max_length tokens when given, never
    padding; cached per (file, max_length), so callers must not reconfigure it. BundleError when absent or unreadable."""
    folder = Path(folder)
    if bundle_file(folder, names.TOKENIZER_FILE) is None:
        raise BundleError(f"{folder}: no {names.TOKENIZER_FILE}; re-export the bundle (it copies the tokenizer)")
    return _load(str(folder / names.TOKENIZER_FILE), max_length)


@lru_cache(maxsize=8)
def _load(path: str, max_length: int | None):
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(path)
    except BaseException as e:  # its own (Rust) exception types; a Rust panic is a BaseException
        raise tokenizer_error(path, e) from e
    if max_length is not None:
        specials = tok.post_processor.num_special_tokens_to_add(False) if tok.post_processor else 0
        if max_length <= specials:  # the tokenizers library then does not truncate at all
            raise InputError(f"max_length (--max-length) {max_length}: {path} adds {specials} special tokens to "
                             f"every text; pass {specials + 1} or more")
        tok.enable_truncation(max_length)
    tok.no_padding()
    return tok


@lru_cache(maxsize=8)
def tokenizer_config(folder: Path) -> dict:
    """tokenizer_config.json as a dict ({} when absent); read once per folder."""
    if bundle_file(folder, names.TOKENIZER_CONFIG) is None:
        return {}
    return read_json_object(folder / names.TOKENIZER_CONFIG, "re-export the bundle", BundleError)


def special_tokens(folder) -> dict:
    """tokenizer_config.json's `*_token` entries (bos_token, eos_token, pad_token, ...) as strings; null ones left out.
    Chat templates refer to them by these names."""
    folder, out = Path(folder), {}
    for key, value in tokenizer_config(folder).items():
        if not key.endswith("_token") or value is None:
            continue
        value = value.get("content") if isinstance(value, dict) else value
        if not isinstance(value, str):
            raise BundleError(f"{folder / names.TOKENIZER_CONFIG}: {key} is a JSON {type(value).__name__}, a string or "
                              "{\"content\": ...} is needed; re-export the bundle")
        out[key] = value
    return out
