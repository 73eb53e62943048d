"""Run a bundle for a user: arrays in / arrays out, or text in / predictions out with the bundle's own tokenizer.

A run binds the user's preloaded arrays next to the token inputs, so a user switch costs a dict merge; the session
is never touched and may serve runs for different users from many threads at once. A per-example bundle serves a
mixed batch of users in one run. user=None runs the bundle's defaults (the coefficients it was exported with, or the
base model). Does not load users or bundles."""

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.runtime.bundle import Bundle, BundleError
from edge_lorax.runtime.users import LoadedUser, UserError


def token_feeds(bundle: Bundle, inputs: dict) -> dict:
    """The graph's token inputs as int64 C-contiguous arrays; token_type_ids default to zeros."""
    missing = [n for n in bundle.token_inputs if n not in inputs and n != names.TOKEN_TYPE_IDS]
    if missing:
        raise InputError(f"input {missing[0]} is required by {bundle.model_path.name}; pass it with the token ids")
    out = {}
    for name in bundle.token_inputs:
        arr = inputs.get(name)
        if arr is None:  # token_type_ids default: all zeros
            arr = np.zeros_like(np.asarray(inputs[names.INPUT_IDS]))
        out[name] = np.ascontiguousarray(arr, dtype=np.int64)
    return out


def feeds_for(bundle: Bundle, user: LoadedUser | None, inputs: dict) -> dict:
    """The run's bindings: token arrays + the user's preloaded arrays (nothing copied for the user)."""
    feeds = token_feeds(bundle, inputs)
    if user is not None:
        if bundle.per_example:
            raise InputError(f"{bundle.model_path.name} is a per-example graph; use run_mixed with one user per example")
        feeds.update(user.arrays)
    return feeds


def run_arrays(bundle: Bundle, user: LoadedUser | None, inputs: dict, outputs=None) -> dict:
    """Arrays in ({input_ids, attention_mask[, token_type_ids]}), {output name: array} out; thread-safe."""
    wanted = list(outputs or bundle.outputs)
    return dict(zip(wanted, bundle.session.run(wanted, feeds_for(bundle, user, inputs))))


def run_adapter(bundle: Bundle, user: LoadedUser, inputs: dict, outputs=None) -> dict:
    """ONNX Runtime's own multi-LoRA path: the user's LoraAdapter activated through its RunOptions (numpy feeds)."""
    if user.run_options is None:
        raise UserError(f"{user.name}: not loaded from an {names.ADAPTER_SUFFIX} file; use run_arrays")
    wanted = list(outputs or bundle.outputs)
    return dict(zip(wanted, bundle.session.run(wanted, token_feeds(bundle, inputs), user.run_options)))


def stack_users(bundle: Bundle, users: list) -> dict:
    """Per-example feeds: each coefficient input stacked along a new batch axis, one user per example."""
    if not bundle.per_example:
        raise InputError(f"{bundle.model_path.name} takes one user per run; open the per_example variant for mixed batches")
    keys = [k for k, s in bundle.coeff_inputs.items() if s.per_example]
    for u in users:
        if any(k not in u.arrays for k in keys):
            raise UserError(f"{u.name}: lacks {next(k for k in keys if k not in u.arrays)}; mixed batches need full users")
    return {k: np.stack([u.arrays[k] for u in users]) for k in keys}  # (batch, ...): one copy per run


def run_mixed(bundle: Bundle, users: list, inputs: dict, outputs=None) -> dict:
    """One run, example i served with users[i] (per-example bundle); shared tensors (e.g. head) use the defaults."""
    n = np.asarray(inputs[names.INPUT_IDS]).shape[0]
    if len(users) != n:
        raise InputError(f"{len(users)} users for a batch of {n}; give one user per example")
    feeds = {**token_feeds(bundle, inputs), **stack_users(bundle, users)}
    wanted = list(outputs or bundle.outputs)
    return dict(zip(wanted, bundle.session.run(wanted, feeds)))


@lru_cache(maxsize=8)
def _tokenizer(path: str, max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.enable_truncation(max_length)
    tok.no_padding()
    return tok


def tokenizer(bundle: Bundle, max_length: int = 128):
    """The bundle's fast tokenizer (tokenizer.json), truncating at max_length; cached per file."""
    path = bundle.path / names.TOKENIZER_FILE
    if not path.is_file():
        raise BundleError(f"{bundle.path}: no {names.TOKENIZER_FILE}; re-export the bundle (it copies the tokenizer)")
    return _tokenizer(str(path), max_length)


def _pad_id(bundle: Bundle) -> int:
    cfg = bundle.path / "tokenizer_config.json"
    pad = json.loads(cfg.read_text()).get("pad_token") if cfg.is_file() else None
    pad = pad.get("content") if isinstance(pad, dict) else pad
    tid = tokenizer(bundle).token_to_id(pad) if pad else None
    return tid if tid is not None else int(bundle.model_config.get("pad_token_id") or 0)


def encode(bundle: Bundle, texts: list, max_length: int = 128) -> dict:
    """Texts -> right-padded int64 input_ids / attention_mask / token_type_ids (only those the graph takes)."""
    encs = tokenizer(bundle, max_length).encode_batch(list(texts))
    width = max(len(e.ids) for e in encs)
    ids = np.full((len(encs), width), _pad_id(bundle), np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)], types[i, : len(e.ids)] = e.ids, 1, e.type_ids
    arrays = {names.INPUT_IDS: ids, names.ATTENTION_MASK: mask, names.TOKEN_TYPE_IDS: types}
    return {k: v for k, v in arrays.items() if k in bundle.token_inputs}


@dataclass(frozen=True)
class Prediction:
    """One text's result: label + probability (classification), score (regression) or a feature vector."""

    text: str
    label: str | None = None
    score: float | None = None
    scores: dict = field(default_factory=dict)  # label -> probability
    vector: list | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {})}


def _labels(bundle: Bundle, n: int) -> list:
    id2label = bundle.model_config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def to_predictions(bundle: Bundle, texts: list, outputs: dict) -> list:
    """Logits -> labelled probabilities (1 logit: a regression score); otherwise the first output as a vector."""
    if names.LOGITS not in outputs:
        first = outputs[bundle.outputs[0]]
        vecs = first[:, 0] if first.ndim == 3 else first  # last_hidden_state -> [CLS]; pooled features as they are
        return [Prediction(t, vector=[float(x) for x in v]) for t, v in zip(texts, vecs)]
    logits = outputs[names.LOGITS]
    if logits.shape[-1] == 1:
        return [Prediction(t, score=float(v[0])) for t, v in zip(texts, logits)]
    labels, probs = _labels(bundle, logits.shape[-1]), _softmax(logits.astype(np.float64))
    return [Prediction(t, labels[int(p.argmax())], float(p.max()), {lab: round(float(x), 6) for lab, x in zip(labels, p)})
            for t, p in zip(texts, probs)]


def predict(bundle: Bundle, user: LoadedUser | None, texts: list, max_length: int = 128) -> list:
    """Text in, predictions out: tokenize with the bundle's tokenizer, run for `user`, label the outputs."""
    if not texts:
        return []
    outputs = run_arrays(bundle, user, encode(bundle, texts, max_length))
    return to_predictions(bundle, list(texts), outputs)


def predict_file(bundle_path, coeffs, texts: list, profile: str = "default", max_length: int = 128) -> list:
    """One-shot: open the bundle, load the user (None: bundle defaults), predict. What `edge-lorax run` calls."""
    from edge_lorax.runtime.bundle import open_bundle
    from edge_lorax.runtime.users import load_user

    bundle = open_bundle(Path(bundle_path), profile)
    if bundle.per_example:
        raise BundleError(f"{bundle.model_path}: per-example graph; open the bundle's fp32 or int8 model to predict")
    user = load_user(bundle, coeffs) if coeffs else None
    return predict(bundle, user, texts, max_length)
