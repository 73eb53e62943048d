"""Is a subspace likely to help a task? A check in seconds, before any training (issue 30).

With a few labelled examples: the first gradient of the task's loss with respect to each adapted weight W (out, in)
of the frozen base model, under a logistic-regression head fitted on the examples' mean-pooled features
(builder.probe's features), and the share of that gradient's energy the subspace can follow. An EigenLoRAx user
changes W only by Cʙ M Cᴀ (Cʙ (out, K), M (K, K), Cᴀ (K, in)), so the share is ‖Cʙᵀ G Cᴀᵀ‖²_F / ‖G‖²_F, summed over
modules. The same share for random orthonormal bases of the same K (expected K²/(in·out)) is the control: a subspace
that catches no more of the gradient than random directions gives the user nothing a random basis would not.
Without examples: the subspace's own facts (sources, K) and the N-curve guidance of the committed study
(benchmarks/subspace_count/report.md). Does not train, does not predict accuracy, and refuses causal-LM subspaces.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_lorax.formats.errors import InputError

# From benchmarks/subspace_count/report.md (MiniLM q/v, K=8, mean kept, pool of 64 adapters: 12 sentiment, spam, TREC,
# 30 disaster categories, 20 newsgroups): a held-out adapter's explained variance from sources of its own family reached
# 90 % of its largest value at N=8-11 (sentiment: 20.6-32.1 %) and N=8-16 (disaster, topic: 12.3-21.2 %); for spam and
# TREC, whose families no source shares, it was 4.6-6.6 % even from all 63 others (a random basis: 0.03-0.06 %).
# How far the gradient share can be trusted, from the same study (report.md, "Does it rank the trained gain?"): over the
# 16 (target, draw) cells with a trained pair at 64 rows, its x-random ranked the trained EigenLoRAx - random gap with
# Spearman rho +0.15 (TREC: 19x, +0.0 points; disaster-request: 6x, +18.8); a quick LoRA on the same rows, +0.30 (18
# cells); the held-out adapter's own explained variance, +0.66 over all 52 trained pairs, and none of the 13 cells whose
# adapter held < 6 % gained more than 1.9 points.
CURVE = {"report": "benchmarks/subspace_count/report.md", "model": "sentence-transformers/all-MiniLM-L6-v2",
         "gap_stops_growing_at": 16, "related_ev": "12-32 %", "absent_family_ev": "4.6-6.6 %", "largest_n": 63,
         "gradient_rank_rho": 0.15, "gradient_rank_cells": 16, "adapter_rank_rho": 0.66, "adapter_rank_cells": 52,
         "adapter_ev_floor": "6 %", "largest_gain_below_floor": 1.9}
LIKELY, UNCLEAR = 10.0, 3.0  # share vs the random mean: >= LIKELY "likely", >= UNCLEAR "unclear", else "unlikely"
RANDOM_DRAWS = 8


@dataclass(frozen=True)
class Advice:
    sources: int  # adapters the subspace was built from
    k: int  # components per module (largest)
    modules: int
    examples: int  # labelled examples used (0: none given)
    captured: float | None  # share of the examples' gradient energy inside the subspace, 0..1
    random_mean: float | None  # the same share for RANDOM_DRAWS random orthonormal bases of the same K
    random_max: float | None
    per_module: dict  # module -> captured share
    verdict: str  # likely | unclear | unlikely | no examples
    reasons: tuple
    curve: dict

    def to_json(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons)}

    def lines(self) -> list:
        """The one-screen text form."""
        out = [f"subspace: {self.sources} source adapters, K={self.k}, {self.modules} modules"]
        if self.examples:
            out.append(f"gradient of {self.examples} examples inside the subspace: {self.captured:.2%} "
                       f"(random bases of the same K: mean {self.random_mean:.3%}, max {self.random_max:.3%}; "
                       f"{self.captured / self.random_mean:.0f}x random)")
        out.append(f"verdict: {self.verdict}")
        return out + [f"- {r}" for r in self.reasons]


def captured_share(G: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> tuple:
    """(energy inside, total energy) of G (out, in) for components Cᴀ (K, in), Cʙ (out, K) with orthonormal rows/columns."""
    inner = cb.T @ G @ ca.T  # (K, K)
    return float(np.sum(inner.astype(np.float64) ** 2)), float(np.sum(G.astype(np.float64) ** 2))


def shares(subspace, grads: dict) -> tuple:
    """(overall share, {module: share}) of the gradients `grads` {module: (out, in)} inside `subspace`."""
    per, num, den = {}, 0.0, 0.0
    for m, ms in subspace.modules.items():
        a, b = captured_share(grads[m], ms.components_A, ms.components_B)
        per[m], num, den = (a / b if b else 0.0), num + a, den + b
    return (num / den if den else 0.0), per


def _head(features: np.ndarray, targets: np.ndarray) -> tuple:
    """Logistic regression (C=1) on raw features: (weight (C, hidden), bias (C,)) as float32 tensors; 2 classes -> 2 rows."""
    import torch
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(targets)) < 2:
        raise InputError("advise needs examples of at least two labels; add rows of another label to the data")
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(features, targets)
    w, b = lr.coef_, lr.intercept_
    if w.shape[0] == 1:  # binary: sklearn keeps one row; the softmax over (-z/2, z/2) gives the same probabilities
        w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    return torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def task_gradients(model_path: Path, subspace, texts, targets: np.ndarray, max_length: int = 64, batch: int = 32) -> dict:
    """{module: dL/dW (out, in) float32} of the mean cross-entropy over the examples, at the frozen base model with a
    fitted logistic-regression head on mean-pooled features; only the subspace's modules get gradients."""
    import torch

    from edge_lorax.builder.inject import _is_conv1d, find_module
    from edge_lorax.builder.probe import load_encoder, pooled_features

    model, tok = load_encoder(model_path)
    w, b = _head(pooled_features(None, texts, max_length, batch, (model, tok)), targets)
    layers = {m: find_module(model, m)[1] for m in subspace.modules}
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers.values():
        layer.weight.requires_grad_(True)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    for start in range(0, len(texts), batch):
        enc = tok(list(texts[start:start + batch]), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, T, H)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        logits = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)) @ w.T + b  # (B, C)
        loss = torch.nn.functional.cross_entropy(logits, y[start:start + batch], reduction="sum") / len(texts)
        loss.backward()
    return {m: (layer.weight.grad.T if _is_conv1d(layer) else layer.weight.grad).numpy().copy() for m, layer in layers.items()}


def verdict(captured: float, random_mean: float, random_max: float, sources: int) -> tuple:
    """(verdict, reasons) from the gradient shares and the source count (LIKELY / UNCLEAR are ratios to random)."""
    ratio = captured / random_mean if random_mean else float("inf")
    if ratio >= LIKELY and captured > random_max:
        word = "likely to help"
    elif ratio >= UNCLEAR and captured > random_max:
        word = "unclear"
    else:
        word = "unlikely to help"
    reasons = [f"the subspace holds {ratio:.0f}x the gradient share of a random basis of the same K "
               f"(likely >= {LIKELY:g}x, unclear >= {UNCLEAR:g}x)"]
    return word, reasons + [_trust_reason()] + _curve_reasons(sources)


def _trust_reason() -> str:
    c = CURVE
    return (f"a screen, not a forecast: in the study this share ranked the trained gain over a random basis weakly "
            f"(Spearman rho {c['gradient_rank_rho']:+.2f}, {c['gradient_rank_cells']} cells); a LoRA of your task, if "
            f"you have one, tells more: its explained variance 1 - relative_error^2 from `edge-lorax project` ranked it "
            f"{c['adapter_rank_rho']:+.2f} ({c['adapter_rank_cells']} cells), and below {c['adapter_ev_floor']} no cell "
            f"gained more than {c['largest_gain_below_floor']} points")


def _curve_reasons(sources: int) -> list:
    c = CURVE
    more = ("more sources are likely to add little" if sources >= c["gap_stops_growing_at"]
            else f"related sources still added up to N={c['gap_stops_growing_at']}")
    return [f"{sources} sources; {more}: in the study ({c['model']}, up to {c['largest_n']} sources) a held-out adapter's "
            f"share in the subspace stopped growing by N={c['gap_stops_growing_at']} ({c['related_ev']}) when the "
            f"sources shared its task family, and stayed {c['absent_family_ev']} for a family absent from them even at "
            f"N={c['largest_n']} ({c['report']})"]


def advise(subspace_dir, data=None, *, model=None, rows: int = 64, max_length: int = 64, seed: int = 0,
           text_column: str = "text", label_column: str = "label") -> Advice:
    """Advice for `subspace_dir` and, optionally, a classification task (file or built-in spec): its first `rows`
    rows give the gradient. InputError for a causal-LM subspace, a regression task or a model mismatch."""
    from edge_lorax.builder.models import CAUSAL_LM, check_base, resolve_model, task_type
    from edge_lorax.builder.subspace import random_like
    from edge_lorax.formats.subspace import read_subspace

    sub = read_subspace(subspace_dir)
    n_src, k = len(sub.config.get("sources", [])), max(ms.k for ms in sub.modules.values())
    if data is None:
        return Advice(n_src, k, len(sub.modules), 0, None, None, None, {}, "no examples", tuple(_curve_reasons(n_src)), CURVE)
    path = resolve_model(model)
    check_base(path, sub)
    if task_type(path) == CAUSAL_LM:
        raise InputError(f"{path}: advise measures encoder (sequence-classification) subspaces only; a decoder's is not supported")
    texts, targets = _examples(data, rows, seed, text_column, label_column)
    grads = task_gradients(path, sub, texts, targets, max_length)
    captured, per = shares(sub, grads)
    randoms = [shares(random_like(sub, seed + i), grads)[0] for i in range(RANDOM_DRAWS)]
    word, reasons = verdict(captured, float(np.mean(randoms)), float(np.max(randoms)), n_src)
    return Advice(n_src, k, len(sub.modules), len(texts), round(captured, 6), round(float(np.mean(randoms)), 8),
                  round(float(np.max(randoms)), 8), {m: round(v, 6) for m, v in per.items()}, word, tuple(reasons), CURVE)


def _examples(data, rows: int, seed: int, text_column: str, label_column: str) -> tuple:
    """(texts, int targets): the first `rows` of the task's rows (train, validation, test in order); classification only."""
    from edge_lorax.builder.data import CLASSIFICATION, load_task

    if rows < 2:
        raise InputError(f"--rows {rows}: at least 2 examples are needed")
    task = load_task(data, text_column=text_column, label_column=label_column, seed=seed)
    if task.kind != CLASSIFICATION:
        raise InputError(f"{data}: advise needs a classification task (labels), not {task.kind}")
    texts = (task.train.texts + task.validation.texts + task.test.texts)[:rows]
    targets = np.concatenate([task.train.targets, task.validation.targets, task.test.targets])[:rows]
    return texts, targets
