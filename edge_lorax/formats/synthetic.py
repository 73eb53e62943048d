"""Seeded random users of given input shapes: what benchmarks time and tests check parity with.

The one generator of synthetic users: coefficients ~ N(0, scale²) or U(-scale, scale), a task head with weight
~ N(0, 1/in) and bias ~ N(0, 1) when the shapes include one. Latency does not depend on the values; parity and
"the output follows the coefficients" checks need them non-zero. Does not make meaningful users (builder.train and
builder.project do).
"""

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.user import User, split_inputs

DISTRIBUTIONS = ("normal", "uniform")


def _draw(rng: np.random.Generator, key: str, shape: tuple, scale: float, dist: str) -> np.ndarray:
    """float32 straight from the generator (no float64 temporaries: memory benchmarks hold thousands of users)."""
    if key == names.HEAD_WEIGHT_T:
        return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[-2]))  # (in, labels): logits O(1)
    if key == names.HEAD_BIAS or dist == "normal":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 if key == names.HEAD_BIAS else scale)
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(2 * scale)


def random_user(shapes: dict, fingerprint: str, seed: int, *, scale: float = 0.5, dist: str = "normal",
                meta: dict | None = None) -> User:
    """A User with one seeded array per {input name: shape} (key order fixed by sorting: same seed, same user)."""
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"dist must be one of {DISTRIBUTIONS}, got {dist!r}")
    rng = np.random.default_rng(seed)
    arrays = {k: _draw(rng, k, tuple(shapes[k]), scale, dist) for k in sorted(shapes)}
    coefficients, head = split_inputs(arrays)
    return User(fingerprint, coefficients, head, meta or {"method": "random", "seed": seed})
