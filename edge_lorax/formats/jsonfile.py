"""Read the JSON files of every format (configs, manifests): one line naming the file on any defect, never a traceback."""

import json
from pathlib import Path

from edge_lorax.formats.errors import InputError


def read_json_object(path, fix: str, error=InputError) -> dict:
    """A JSON object (dict) from `path`; unreadable, non-UTF-8, invalid or non-object JSON raises `error`."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise error(f"{path}: not readable JSON ({type(e).__name__}: {str(e).splitlines()[0][:120]}); {fix}") from e
    if not isinstance(value, dict):
        raise error(f"{path}: holds a JSON {type(value).__name__}, an object is needed; {fix}")
    return value
