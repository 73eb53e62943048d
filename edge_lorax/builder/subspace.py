"""Build, save and load an EigenLoRAx subspace: per adapted module, principal directions of the stacked LoRA factors.

Per module: rows of all A's (N·r × in) and columns of all B's (out × N·r, taken as rows) each go through a
streaming, mean-updating SVD (exact while the stack's rank ≤ max_rank, truncated to max_rank beyond), chunk_rows
rows at a time, so memory stays flat in N and time grows linearly. Components are orthonormal rows with
deterministic signs. Options are range-checked before any adapter is read; adapters are aligned to the first one's
module names by the one naming rule (edge_lorax.formats.peft.name_variants) and an adapter whose ΔW is zero in a
module is refused (it would add only noise). Modules are independent: an executor (builder.executor; Ray) builds
them as one task each, by the same code on the same rows, so the subspace is bit-identical to the local build. Does
not train anything, and does not read or write the subspace folder (edge_lorax.formats.subspace).
"""

import functools
import math
import os
import socket
import zlib

import numpy as np

from edge_lorax.builder.executor import map_items
from edge_lorax.builder.models import canonical_base, portable_base
from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.peft import (
    AdapterError,
    AdapterInfo,
    align_modules,
    module_difference,
    read_adapter,
    read_factors,
    renamed,
)
from edge_lorax.formats.subspace import KIND, ModuleSubspace, Subspace, fingerprint_tensors, subspace_tensors

MEAN_MODES = ("drop", "keep")
# keep beat drop with all training rows (+0.6 points, 95% CI +0.2..+1.0, 12 paired runs) and tied at 256 and 64 rows:
# benchmarks/paper_table/report.md. The paper's setting is `mean="drop"`.
DEFAULT_MEAN = "keep"


class _StreamingSVD:
    """Incremental PCA (Ross et al. 2008): exact mean and scatter, top max_rank directions kept."""

    def __init__(self, max_rank: int):
        self.max_rank, self.n, self.total = max_rank, 0, 0.0
        self.mean = self.S = self.Vt = None

    def update(self, X: np.ndarray):  # X: (m, d) rows
        m, mean_b = X.shape[0], X.mean(axis=0)
        Xc = X - mean_b
        self.total += float((Xc * Xc).sum())
        if self.n == 0:
            self.n, self.mean, stacked = m, mean_b, Xc
        else:
            n_tot = self.n + m
            shift = np.sqrt(self.n * m / n_tot) * (self.mean - mean_b)  # (d,)
            self.total += float(shift @ shift)
            stacked = np.vstack([self.S[:, None] * self.Vt, Xc, shift[None]])
            self.mean, self.n = (self.n * self.mean + m * mean_b) / n_tot, n_tot
        self.S, self.Vt = top_rows(stacked, self.max_rank)


def top_rows(M: np.ndarray, max_rank: int, rtol: float = 1e-6) -> tuple:
    """(S, Vt) of M's top right singular vectors, via two Gram eigendecompositions (BLAS-3; ~2x faster than LAPACK's
    SVD on wide stacks). Pass 1 rotates M's rows onto its principal axes, pass 2 re-orthogonalises the top ones, so
    singular values and orthonormality are accurate to float64 rounding; directions below rtol·S[0] (variance ratio
    < 1e-12; float32 storage noise sits near 1e-8) are treated as null, which defines the stack's rank."""
    if M.shape[0] > M.shape[1]:
        M = np.linalg.qr(M, mode="r")  # (d, d): same singular values and right vectors, smaller Gram
    _, U = np.linalg.eigh(M @ M.T)
    rows = U[:, ::-1][:, : max_rank + 8].T @ M  # pass 1: top rows, nearly orthogonal
    _, U = np.linalg.eigh(rows @ rows.T)
    rows = U[:, ::-1].T @ rows  # pass 2: orthogonal to rounding
    S = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    order = np.argsort(-S, kind="stable")
    S, rows = S[order], rows[order]
    keep = min(max_rank, int((S > S[0] * rtol).sum()) if S.size and S[0] > 0 else 0)
    return S[:keep], rows[:keep] / S[:keep, None]


def _fix_signs(rows: np.ndarray) -> np.ndarray:
    """Flip each row so its largest-magnitude entry is positive: same inputs, bit-identical components."""
    idx = np.abs(rows).argmax(axis=1)
    signs = np.sign(rows[np.arange(rows.shape[0]), idx])
    return rows * np.where(signs == 0, 1.0, signs)[:, None]


def _orthonormal_extend(basis: np.ndarray, candidates: np.ndarray, what: str) -> np.ndarray:
    """Gram–Schmidt each candidate row against basis (twice, for stability) and append it; refuses a null residual."""
    rows = list(basis)
    for v in candidates:
        for _ in range(2):
            for b in rows:
                v = v - (v @ b) * b
        norm = np.linalg.norm(v)
        if norm < 1e-8:
            raise InputError(f"{what}: residual norm {norm:.1e} < 1e-8; the space is full, ask for fewer directions")
        rows.append(v / norm)
    return np.array(rows).reshape(len(rows), basis.shape[1])


def _module_rng(seed: int, module: str, side: str) -> np.random.Generator:
    """A generator per (seed, module, side), independent of build order."""
    return np.random.default_rng([seed, zlib.crc32(module.encode()), ord(side)])


def _stack_rows(infos, module: str, max_rank: int, chunk_rows: int) -> tuple:
    """Stream one module's A rows and B columns (as rows) through two SVDs, each adapter read once, a chunk at a time:
    returns (svd of the A stack, svd of the B stack)."""
    svds, chunks = (_StreamingSVD(max_rank), _StreamingSVD(max_rank)), ([], [])
    for i, info in enumerate(infos):
        A, B = read_factors(info, module)
        _refuse_zero(info, module, A, B)
        chunks[0].append(A)  # (r, in)
        chunks[1].append(B.T)  # (r, out)
        if sum(c.shape[0] for c in chunks[0]) >= chunk_rows or i == len(infos) - 1:
            for svd, chunk in zip(svds, chunks):
                rows = np.vstack(chunk)
                chunk.clear()  # free the pieces before the update allocates
                svd.update(rows)
                del rows
    return svds


def _refuse_zero(info: AdapterInfo, module: str, A: np.ndarray, B: np.ndarray):
    """A zero lora_A or lora_B (an untrained PEFT adapter has B = 0) makes ΔW = 0: degenerate, refused by name."""
    for side, factor in (("A", A), ("B", B)):
        if not factor.any():
            raise AdapterError(f"{info.weights}: module {module} has lora_{side} all zero, so ΔW = 0 (an untrained or "
                               "degenerate adapter) and its other factor would add only noise; train it or leave it out")


def _side_components(svd: _StreamingSVD, k: int, augment: int, mean: str, rng, what: str) -> np.ndarray:
    """K principal rows (the unit mean first when kept) + `augment` random orthonormal rows -> (K+augment, d)."""
    d = svd.Vt.shape[1]
    if mean == "keep":
        basis = _mean_first(svd, k, what)
    else:
        basis = svd.Vt[:k]
    basis = _fix_signs(basis.reshape(-1, d))
    if augment:
        basis = np.vstack([basis, _fix_signs(_orthonormal_extend(basis, rng.standard_normal((augment, d)), what)[len(basis):])])
    return basis


def _mean_first(svd: _StreamingSVD, k: int, what: str) -> np.ndarray:
    """The unit mean, then principal directions Gram–Schmidt'ed against it; a direction already in the span (the mean
    lies inside the principal subspace, e.g. adapters from a planted subspace) is skipped, not normalised noise."""
    norm = np.linalg.norm(svd.mean)
    if norm == 0:
        raise InputError(f"{what}: the mean adapter is zero, it has no direction to keep; use --mean drop")
    rows = [svd.mean / norm]
    for v in svd.Vt:
        if len(rows) == k:
            break
        for _ in range(2):
            v = v - (np.array(rows) @ v) @ np.array(rows)
        if np.linalg.norm(v) > 1e-5:  # float32-stored factors leave ~1e-7 of a mean that lies in the span
            rows.append(v / np.linalg.norm(v))
    if len(rows) < k:
        raise InputError(f"{what}: K={k} exceeds the rank {len(rows)} of the stacked adapters with their mean; "
                         f"use --components {len(rows)}, or --components {len(rows)} --augment {k - len(rows)}")
    return np.array(rows)


def _choose_k(svd_a: _StreamingSVD, svd_b: _StreamingSVD, components, explained_variance, mean: str) -> int:
    """Fixed K, or the smallest K whose cumulative explained variance reaches the target on both sides."""
    if components is not None:
        return components
    extra = 1 if mean == "keep" else 0
    ks = [int(np.searchsorted(np.cumsum(svd.S**2) / svd.total, explained_variance - 1e-12) + 1) for svd in (svd_a, svd_b)]
    return max(ks) + extra


def _available(svd: _StreamingSVD, mean: str) -> int:
    return svd.S.shape[0] + (1 if mean == "keep" else 0)


def _check_readable(infos):
    """Every adapter's weights file readable here, else one line naming it and this host: executor tasks read
    adapters by path, so on a cluster every node needs them at the same path."""
    for info in infos:
        if not os.access(info.weights, os.R_OK):
            raise AdapterError(f"{info.weights}: not readable on host {socket.gethostname()}; build tasks read adapters "
                               "by path: with --executor ray on several machines put them on a filesystem every node "
                               "mounts at the same path (NFS, a shared volume), or build with --executor local")


def build_module(infos, module: str, *, components=None, explained_variance=None, augment=0, mean=DEFAULT_MEAN, seed=0,
                 max_rank=512, chunk_rows=512) -> ModuleSubspace:
    """One module's subspace; K beyond the stack's rank without augmentation is refused."""
    _check_readable(infos)
    svd_a, svd_b = _stack_rows(infos, module, max_rank, chunk_rows)
    k = _choose_k(svd_a, svd_b, components, explained_variance, mean)
    have = min(_available(svd_a, mean), _available(svd_b, mean))
    if k > have:
        raise InputError(f"{module}: K={k} exceeds the rank {have} of {len(infos)} stacked adapters; "
                         f"use --components {have}, or --components {have} --augment {k - have} for {k} directions")
    comp_a = _side_components(svd_a, k, augment, mean, _module_rng(seed, module, "A"), module)
    comp_b = _side_components(svd_b, k, augment, mean, _module_rng(seed, module, "B"), module)
    ratio = lambda svd: (svd.S**2 / svd.total if svd.total > 0 else svd.S * 0).astype(np.float32)  # noqa: E731
    return ModuleSubspace(comp_a.astype(np.float32), np.ascontiguousarray(comp_b.T.astype(np.float32)),
                          ratio(svd_a), ratio(svd_b), max(i.ranks[module] for i in infos), k)


def _align_adapters(infos: list) -> list:
    """Every adapter under the first one's module names (the one naming rule: `bert.` may be present or not);
    refused naming the first module that differs."""
    first, out = infos[0], [infos[0]]
    for info in infos[1:]:
        mapping = align_modules(info.modules, first.modules)
        if mapping is None:
            raise AdapterError(f"{info.path}: target modules differ from {first.path} "
                               f"({module_difference(info.modules, first.modules, 'this adapter', 'the first')}); "
                               "build one subspace per set of target modules")
        out.append(renamed(info, mapping))
    return out


def _check_compatible(infos: list, allow_base_mismatch: bool = False) -> list:
    """Same modules (after the naming rule), shapes and base model across adapters; the message names the adapter
    and module. Returns the adapters under the first one's module names."""
    infos = _align_adapters(infos)
    first = infos[0]
    for info in infos[1:]:
        bad = [m for m in first.modules if info.shapes[m] != first.shapes[m]]
        if bad:
            raise AdapterError(f"{info.path}: module {bad[0]} is {info.shapes[bad[0]]}, {first.path} has "
                               f"{first.shapes[bad[0]]}; adapters must share one base model")
        if not allow_base_mismatch and canonical_base(info.base_model) != canonical_base(first.base_model):
            raise AdapterError(f"{info.path}: base model {info.base_model!r} differs from {first.base_model!r} "
                               f"({first.path}); pass --allow-base-mismatch if they really share weights")
    return infos


def _module_config(ms: ModuleSubspace, shape: tuple, mean: str = "drop") -> dict:
    """explained_variance_*: share of the centred stack's variance in the principal directions kept (with mean keep,
    one of the `principal` slots holds the mean, so principal - 1 directions count)."""
    count = ms.principal - (1 if mean == "keep" else 0)
    explained = lambda e: round(float(e[:count].sum()), 6)  # noqa: E731
    return {"out": shape[0], "in": shape[1], "K": ms.k, "r": ms.rank, "principal": ms.principal,
            "augmented": ms.k - ms.principal, "explained_variance_A": explained(ms.explained_A),
            "explained_variance_B": explained(ms.explained_B)}


def _source_entry(info: AdapterInfo) -> dict:
    return {"name": info.path.name, "sha256": info.sha256, "base_model": portable_base(info.base_model),
            "ranks": sorted(set(info.ranks.values()))}


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_build_options(components, explained_variance, augment=0, mean=DEFAULT_MEAN, seed=0, max_rank=512):
    """Every option in range before any adapter is read; the message names the option."""
    if (components is None) == (explained_variance is None):
        raise InputError("give exactly one of --components K or --explained-variance F")
    if components is not None and not (_is_int(components) and components >= 1):
        raise InputError(f"--components {components!r}: K must be an integer >= 1 (directions kept per module)")
    if explained_variance is not None and not (isinstance(explained_variance, (int, float)) and
                                               math.isfinite(explained_variance) and 0 < explained_variance <= 1):
        raise InputError(f"--explained-variance {explained_variance!r}: a ratio in (0, 1] is needed, e.g. 0.9")
    if mean not in MEAN_MODES:
        raise InputError(f"--mean must be one of {MEAN_MODES}, got {mean!r}")
    for name, value, low in (("--augment", augment, 0), ("--seed", seed, 0), ("max_rank", max_rank, 1)):
        if not (_is_int(value) and value >= low):
            raise InputError(f"{name} {value!r}: an integer >= {low} is needed")


def build_subspace(adapter_dirs, *, components=None, explained_variance=None, augment=0, mean=DEFAULT_MEAN, seed=0,
                   allow_base_mismatch=False, max_rank=512, progress=None, executor=None, task_stats=None) -> Subspace:
    """Stack, SVD and select per module; exactly one of components / explained_variance. executor: where the
    per-module tasks run (builder.executor.Executor; None: here); progress(done, total) after each module; task_stats: a
    list that receives each module's task {module, seconds, pid, host, peak_rss_mib}."""
    check_build_options(components, explained_variance, augment, mean, seed, max_rank)
    infos = [read_adapter(d) for d in adapter_dirs]
    if not infos:
        raise InputError("no adapters given; pass one or more PEFT adapter folders")
    infos = _check_compatible(infos, allow_base_mismatch)
    task = functools.partial(build_module, infos, components=components, explained_variance=explained_variance,
                             augment=augment, mean=mean, seed=seed, max_rank=max_rank)
    outcomes = map_items(task, infos[0].modules, executor, progress)
    modules = {m: o.value for m, o in zip(infos[0].modules, outcomes)}
    if task_stats is not None:
        task_stats.extend({"module": m, **o.stats()} for m, o in zip(infos[0].modules, outcomes))
    config = {"format_version": names.FORMAT_VERSION, "kind": KIND,
              "base_model": portable_base(infos[0].base_model), "fan_in_fan_out": infos[0].fan_in_fan_out, "mean": mean,
              "augment": augment, "seed": seed, "max_rank": max_rank,
              "selection": {"components": components} if components is not None else {"explained_variance": explained_variance},
              "modules": {m: _module_config(ms, infos[0].shapes[m], mean) for m, ms in modules.items()},
              "sources": [_source_entry(i) for i in infos]}
    config["fingerprint"] = fingerprint_tensors(subspace_tensors(modules), config)
    return Subspace(modules, config)


def random_like(sub: Subspace, seed: int) -> Subspace:
    """The control of the recycling claim: random orthonormal components of the same shapes as `sub` (QR of a seeded
    Gaussian per module and side), with its own fingerprint. Same K, same machinery, no recycled information."""
    from dataclasses import replace

    rng, modules = np.random.default_rng(seed + 1000), {}
    for name, ms in sub.modules.items():
        qa = np.linalg.qr(rng.standard_normal(ms.components_A.T.shape))[0].T.astype(np.float32)  # (K, in)
        qb = np.linalg.qr(rng.standard_normal(ms.components_B.shape))[0].astype(np.float32)  # (out, K)
        modules[name] = replace(ms, components_A=qa, components_B=qb)
    config = {**sub.config, "kind": "random-control", "seed": seed}
    config["fingerprint"] = fingerprint_tensors(subspace_tensors(modules), config)
    return Subspace(modules, config)
