"""The builder's one cache folder: derived task data (VADER, package tasks) and converted models live under it.

`$EDGE_LORAX_CACHE`, default `~/.cache/edge-lorax`; read on every call, so a test's monkeypatched environment holds.
Does not create the folder or clean it.
"""

import os
from pathlib import Path


def cache_dir() -> Path:
    """$EDGE_LORAX_CACHE, default ~/.cache/edge-lorax (not created here)."""
    return Path(os.environ.get("EDGE_LORAX_CACHE", Path.home() / ".cache" / "edge-lorax"))
