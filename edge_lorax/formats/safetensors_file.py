"""Read safetensors files of every format: a truncated, empty or garbage file is one line naming it, never a traceback."""

from pathlib import Path

from edge_lorax.formats.errors import InputError


def safetensors_error(path, e: Exception, fix: str, error=InputError) -> InputError:
    """The one message for a safetensors file that cannot be parsed."""
    return error(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120] or type(e).__name__}); {fix}")


def read_safetensors(path, fix: str, error=InputError) -> dict:
    """{name: numpy array} of the whole file; any parse failure raises `error` naming the file."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(Path(path)))
    except Exception as e:  # safetensors raises SafetensorError, OSError, ValueError... depending on the defect
        raise safetensors_error(path, e, fix, error) from e
