"""Parity checks run after writing a bundle: ONNX Runtime vs the eager torch wrapper on seeded sample inputs.

Each check feeds several coefficient sets (the defaults, then random U(-s, s) sets, the last with a random head) and
fails if the max abs diff exceeds tolerance x output scale (TOLERANCE_RULE), or if the graph's output change across
the sets points elsewhere than torch's (cosine < RESPONSE_MIN): inputs that were folded away or cut off are caught
even when the absolute error is within tolerance. Does not test accuracy.
"""

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from edge_lorax.export.graph import Prepared
from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.runtime.bundle import SessionConfig, session_options

TOLERANCES = {"fp32": 1e-4, "int8": 0.25, "ort": 1e-4, "int8_ort": 0.25, "fused": 1e-4}  # of max abs diff / scale, vs torch fp32
TOLERANCE_RULE = "max_abs_diff <= tolerance * scale, scale = max(1, max |torch output|)"
RESPONSE_MIN = 0.9  # cosine(Δgraph, Δtorch): a graph that ignores its coefficient inputs scores 0
QUANTIZED = ("int8", "int8_ort")  # variants whose tolerance is int8 noise (not a bug when exceeded)


class QuantizationError(InputError):
    """A quantized variant off by more than its tolerance: the export is refused in one line with the fix."""


COEFF_SCALES = (0.5, 2.0)  # random sets ~ U(-s, s): the paper's initialisation, and strong enough to beat int8 noise


@dataclass(frozen=True)
class Check:
    variant: str  # key of names.BUNDLE_VARIANT_FILES
    max_abs_diff: float
    tolerance: float
    scale: float  # max(1, max |torch output|): tolerances are relative to it
    effect: float  # max |Δtorch|, Δ = output(random set) - output(defaults)
    response: float  # cosine(Δgraph, Δtorch) over all random sets: the coefficient inputs at work (1 = as torch)
    sets: int

    def as_dict(self) -> dict:
        return {"max_abs_diff": float(self.max_abs_diff), "tolerance": self.tolerance, "scale": float(self.scale),
                "effect": float(self.effect),
                "response": float(self.response), "response_min": RESPONSE_MIN,
                "coefficient_sets": self.sets}


def _make_session(path) -> ort.InferenceSession:
    """The runtime's session options (edge_lorax.runtime.bundle: verified as it will serve) on one intra-op thread
    (shared machines); errors only."""
    return ort.InferenceSession(str(path), session_options(SessionConfig(threads=1)), providers=["CPUExecutionProvider"])


def _head_scale(prepared: Prepared) -> float:
    """1/√in: torch.nn.Linear's init bound, the size of a fresh head (trained MiniLM heads stay below ~0.2). A U(-2, 2)
    head (the coefficients' scale) multiplied the int8 graph's ~10 % noise on head_input into logit errors of 0.7 (issue
    26): it tested the noise of a head no user has, not the graph."""
    shape = next(s.shape for s in prepared.spec.feeds if s.name == names.HEAD_WEIGHT_T)
    return 1.0 / float(np.sqrt(shape[-2]))


def _random_feeds(prepared: Prepared, batch: int, seed: int, with_head: bool, scale: float = 0.5) -> dict:
    """Seeded U(-scale, scale) coefficients (per-example: a different user per row); with_head: a random head too,
    U(-1/√in, 1/√in) like a fresh torch.nn.Linear (_head_scale)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in prepared.spec.feeds:
        head = s.name.startswith(names.HEAD_PREFIX)
        if head and not with_head:
            continue
        shape = (batch, *s.shape[1:]) if s.shape[:1] == (names.DIM_BATCH,) else s.shape
        bound = _head_scale(prepared) if head else scale
        out[s.name] = (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(2 * bound)
    return out


def _feed_sets(prepared: Prepared, batch: int, seed: int = 1) -> list:
    """[{}, random coefficients per scale (with a random head on the last, if the graph has one)]; {} = defaults."""
    if not prepared.spec.feeds:
        return [{}]
    head = any(n.startswith(names.HEAD_PREFIX) for n in prepared.spec.feed_names)
    last = len(COEFF_SCALES) - 1
    return [{}] + [_random_feeds(prepared, batch, seed + i, head and i == last, s) for i, s in enumerate(COEFF_SCALES)]


@torch.no_grad()
def _torch_output(prepared: Prepared, tokens: dict, feeds: dict) -> np.ndarray:
    """The eager wrapper with `feeds` over the defaults (per-example defaults broadcast over the batch)."""
    batch = tokens[names.INPUT_IDS].shape[0]
    args = [torch.from_numpy(tokens[s.name]) for s in prepared.spec.tokens]
    for s in prepared.spec.feeds:
        value = feeds.get(s.name, prepared.defaults[s.name])
        if s.shape[:1] == (names.DIM_BATCH,) and value.shape[0] != batch:
            value = np.repeat(value, batch, 0)
        args.append(torch.from_numpy(np.ascontiguousarray(value)))
    out = prepared.wrapper(*args)
    return (out[0] if isinstance(out, tuple) else out).numpy()  # the task output; head_input feeds it


def _ort_output(session: ort.InferenceSession, tokens: dict, feeds: dict) -> np.ndarray:
    return session.run(None, {**tokens, **feeds})[0]


def cosine(got: list, want: list) -> float:
    """cos(Δgot, Δwant), Δ = each output minus the first (the defaults'), all flattened; 1.0 when there is no Δ."""
    dg = np.concatenate([(g - got[0]).ravel() for g in got[1:]] or [np.zeros(1)]).astype(np.float64)
    dw = np.concatenate([(w - want[0]).ravel() for w in want[1:]] or [np.zeros(1)]).astype(np.float64)
    norm = float(np.linalg.norm(dg) * np.linalg.norm(dw))
    return float(dg @ dw / norm) if norm > 0 else float(not dw.any() and not dg.any())


def check_variant(variant: str, path, graph: Prepared, reference: Prepared, tokens: dict) -> Check:
    """Max abs diff of the graph at `path` vs the `reference` wrapper over every feed set; raises above tolerance."""
    session, tol = _make_session(path), TOLERANCES[variant]
    sets = _feed_sets(graph, tokens[names.INPUT_IDS].shape[0])
    want = [_torch_output(reference, tokens, feeds) for feeds in sets]  # sets[0] is the defaults
    got = [_ort_output(session, tokens, feeds) for feeds in sets]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
    effect = max(float(np.abs(w - want[0]).max()) for w in want)
    response, scale = cosine(got, want), max(1.0, max(float(np.abs(w).max()) for w in want))
    if not worst <= tol * scale and variant in QUANTIZED:  # a legitimate outcome for some graphs: one line, a fix
        raise QuantizationError(f"{variant} graph {path.name}: ONNX Runtime differs from torch by {worst:.3g} > {tol:g} x "
                                f"{scale:.3g} on the verification texts; this graph does not keep its accuracy at "
                                f"{variant}, export it without --quantize (fp32); nothing written")
    if not worst <= tol * scale:  # NaN fails too
        raise RuntimeError(f"{variant} graph {path.name}: ONNX Runtime differs from torch by {worst:.3g} > "
                           f"{tol:g} x {scale:.3g}; nothing written")
    if len(sets) > 1 and not response >= RESPONSE_MIN:
        raise RuntimeError(f"{variant} graph {path.name}: its output follows the coefficients with cosine {response:.3f} "
                           f"to torch's (< {RESPONSE_MIN}); the coefficient inputs are not wired; nothing written")
    return Check(variant, worst, tol, scale, effect, response, len(sets))
