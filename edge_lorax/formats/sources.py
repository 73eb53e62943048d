"""The projected source adapters of a subspace (`sources.npz`): kept by `build`, shipped in bundles, mixed on device.

A user file (edge_lorax.formats.user, same writer and reader: fixed zip timestamps, never unpickled) whose
coefficients are stacked over the S sources — `<module>.coeff_A` (S, r, K), `<module>.coeff_B` (S, K, r), float32 —
and whose `__meta__` lists the source names in that order under "sources". Each row is a source adapter's
training-free projection onto the subspace (builder.project.project_adapter, heads left out), so a new user can
start from a mix of them (runtime.personalize). Refused in one line naming the file when its names, fingerprint or
shapes disagree with what reads it. numpy only: the runtime reads it. Does not project (the builder does).
"""

from pathlib import Path

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.user import User, UserError, check_fingerprint, conform_inputs, read_user, write_user

SOURCES_FILE = "sources.npz"


def stack_sources(fingerprint: str, users: dict) -> User:
    """{source name: User} (one subspace, same shapes) -> one User holding them stacked on a leading axis."""
    names_ = list(users)
    keys = sorted(users[names_[0]].coefficients)
    coeffs = {k: np.stack([np.asarray(users[n].coefficients[k], np.float32) for n in names_]) for k in keys}  # (S, ...)
    return User(fingerprint, coeffs, {}, {"sources": names_, "method": "projection"})


def write_sources(stacked: User, path) -> Path:
    """sources.npz, deterministic (write_user)."""
    return write_user(stacked, path)


def read_sources(path, fingerprint: str, shapes: dict) -> dict:
    """{source name: {input name: array}} from sources.npz, every row checked against `shapes` ({name: per-user
    shape}: the subspace's or the bundle's coefficient inputs) and `fingerprint`; UserError names the file and fix."""
    path = Path(path)
    user = read_user(path)
    fix = "rebuild the subspace with `edge-lorax build` and re-export the bundle"
    check_fingerprint(user, fingerprint, path, fix)
    listed = user.meta.get("sources")
    if user.head or not isinstance(listed, list) or not listed or len(set(map(str, listed))) != len(listed):
        raise UserError(f"{path}: not a sources file (no unique 'sources' names in {names.META_KEY}, or a head); {fix}")
    rows = user.coefficients
    bad = next((k for k, v in rows.items() if v.ndim < 1 or v.shape[0] != len(listed)), None)
    if bad is not None:
        raise UserError(f"{path}: {bad} has {rows[bad].shape[:1]} rows for {len(listed)} sources; {fix}")
    coeffs = {k: s for k, s in shapes.items() if not k.startswith(names.HEAD_PREFIX)}
    return {str(n): conform_inputs(f"{path} (source {n})", {k: v[i] for k, v in rows.items()}, coeffs, "this subspace")
            for i, n in enumerate(listed)}
