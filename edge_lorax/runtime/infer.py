"""Run a bundle for a user: arrays in / arrays out, or text in / predictions out with the bundle's own tokenizer.

A run binds the user's preloaded arrays next to the token inputs, so a user switch costs a dict merge; the session
is never touched and may serve runs for different users from many threads at once. A per-example bundle serves a
mixed batch of users in one run. user=None runs the bundle's defaults (the coefficients it was exported with, or the
base model). The public functions check what they are given before ONNX Runtime sees it (texts a list of UTF-8
strings, token arrays integer, in the vocabulary and of one batch, max_length within the model's positions) and
refuse with one InputError naming the input. A user's own class names (its __meta__ labels) label its predictions.
Does not load users or bundles."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_lorax.formats import architectures, names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.user import check_fingerprint
from edge_lorax.runtime.bundle import Bundle, BundleError
from edge_lorax.runtime.tokens import load_tokenizer, special_tokens, tokenizer_error
from edge_lorax.runtime.users import LoadedUser, UserError

# ------------------------------------------------------------------------------------------ the model's limits

def max_positions(bundle: Bundle) -> int | None:
    """Tokens per sequence the model can embed (config.json), None when the config does not say; a type whose
    position ids start after the pad id (formats.architectures.has_position_offset) loses pad_token_id + 1."""
    cfg = bundle.model_config
    limit = cfg.get("max_position_embeddings", cfg.get("n_positions"))
    if limit is not None and architectures.has_position_offset(cfg.get("model_type")):
        limit -= int(cfg.get("pad_token_id") or 0) + 1
    return limit


def check_max_length(bundle: Bundle, max_length) -> int:
    """max_length (the CLI's --max-length): an integer from 1 to the model's positions."""
    limit = max_positions(bundle)
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
        raise InputError(f"max_length (--max-length) must be an integer, got {type(max_length).__name__}")
    if max_length < 1 or (limit is not None and max_length > limit):
        top = f"{limit} (the model's positions, {bundle.path / names.BUNDLE_CONFIG})" if limit else "the model's positions"
        raise InputError(f"max_length (--max-length) {max_length} is out of range; pass 1 to {top}")
    return int(max_length)


def _check_texts(texts) -> list:
    """texts: a list (or tuple) of str, each encodable as UTF-8 (command-line bytes that were not UTF-8 arrive as
    surrogate escapes)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}; wrap one text as [text]")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is a {type(text).__name__}, a str is needed")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"texts[{i}] (text argument {i + 1}) is not valid UTF-8 text (undecodable byte at position "
                             f"{e.start}); pass UTF-8 text (check the terminal's or file's encoding)") from e
    return list(texts)


# ------------------------------------------------------------------------------------------------ token arrays

def _as_tokens(name: str, value) -> np.ndarray:
    """One token input as a 2-D integer array (attention_mask may be bool), or an InputError naming it."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged lists
        raise InputError(f"{name}: not a rectangular array ({str(e).splitlines()[0][:80]}); pad every row to one length") from e
    ok = arr.dtype.kind in "iu" or (name == names.ATTENTION_MASK and arr.dtype.kind == "b")
    if not ok:
        raise InputError(f"{name} is {arr.dtype}; token inputs are integer arrays (batch, sequence)")
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputError(f"{name} has shape {arr.shape}; (batch, sequence) with at least one token per example is needed")
    return arr


def _check_range(name: str, arr: np.ndarray, top: int | None, what: str):
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or (top is not None and high >= top):
        bad = low if low < 0 else high
        raise InputError(f"{name} holds {bad}; values must be in [0, {top if top is not None else '...'}) ({what})")


def _check_tokens(bundle: Bundle, inputs: dict) -> dict:
    """The token arrays of a run, checked: known names, integer dtypes, one (batch, sequence) shape, ids inside the
    vocabulary, a 0/1 mask, at most the model's positions. Returns {name: array} as given (not yet int64)."""
    if not isinstance(inputs, dict):
        raise InputError(f"inputs must be a dict of token arrays ({', '.join(bundle.token_inputs)}), got {type(inputs).__name__}")
    unknown = sorted(set(inputs) - set(names.TOKEN_INPUTS), key=str)
    if unknown:
        raise InputError(f"input {unknown[0]!r} is not a token input; pass {', '.join(bundle.token_inputs)} (users' "
                         "tensors go through load_user / make_user)")
    missing = [n for n in bundle.token_inputs if n not in inputs and n != names.TOKEN_TYPE_IDS]
    if missing:
        raise InputError(f"input {missing[0]} is required by {bundle.model_path.name}; pass it with the token ids")
    arrays = {n: _as_tokens(n, v) for n, v in inputs.items()}  # every token input given, taken or not
    shape = arrays[names.INPUT_IDS].shape
    for name, arr in arrays.items():
        if arr.shape != shape:
            raise InputError(f"{name} has shape {arr.shape}, input_ids {shape}; every token input needs one row per example")
    cfg, limit = bundle.model_config, max_positions(bundle)
    if limit is not None and shape[1] > limit:
        raise InputError(f"input_ids has {shape[1]} tokens per example, the model embeds at most {limit}; truncate the texts")
    _check_range(names.INPUT_IDS, arrays[names.INPUT_IDS], cfg.get("vocab_size"), "the model's vocab_size")
    if names.ATTENTION_MASK in arrays:
        _check_range(names.ATTENTION_MASK, arrays[names.ATTENTION_MASK].astype(np.int64), 2, "1 = token, 0 = padding")
    if names.TOKEN_TYPE_IDS in arrays:
        _check_range(names.TOKEN_TYPE_IDS, arrays[names.TOKEN_TYPE_IDS], cfg.get("type_vocab_size"), "the model's type_vocab_size")
    return arrays


def _token_feeds(bundle: Bundle, inputs: dict) -> dict:
    """The graph's token inputs, checked (_check_tokens), as int64 C-contiguous arrays; token_type_ids default to zeros."""
    arrays = _check_tokens(bundle, inputs)
    out = {}
    for name in bundle.token_inputs:
        arr = arrays.get(name)
        if arr is None:  # token_type_ids default: all zeros
            arr = np.zeros_like(arrays[names.INPUT_IDS])
        out[name] = np.ascontiguousarray(arr, dtype=np.int64)
    return out


def _wanted(bundle: Bundle, outputs) -> list:
    """The output names a run returns: all of the graph's by default; a name the graph lacks is refused."""
    wanted = list(bundle.outputs) if outputs is None else ([outputs] if isinstance(outputs, str) else list(outputs))
    unknown = [o for o in wanted if o not in bundle.outputs]
    if unknown or not wanted:
        raise InputError(f"outputs {unknown[:1] or '[]'} not among the graph's outputs {list(bundle.outputs)}; pick from those")
    return wanted


def check_user(bundle: Bundle, user, where: str = "user"):
    """A LoadedUser of this bundle's subspace (load_user / make_user checked it against a bundle of it)."""
    if not isinstance(user, LoadedUser):
        raise InputError(f"{where} must be a LoadedUser (runtime.load_user(bundle, path)), got {type(user).__name__}")
    check_fingerprint(user.fingerprint, bundle.fingerprint, f"user {user.name!r} (loaded on another bundle)")


def feeds_for(bundle: Bundle, user: LoadedUser | None, inputs: dict) -> dict:
    """The run's bindings: token arrays + the user's preloaded arrays (nothing copied for the user)."""
    feeds = _token_feeds(bundle, inputs)
    if user is not None:
        check_user(bundle, user)
        if bundle.per_example:
            raise InputError(per_example_refusal(bundle, "take one user for the whole run"))
        feeds.update(user.arrays)
    return feeds


def per_example_refusal(bundle: Bundle, what: str) -> str:
    """The one message for a per-example graph asked for one user per run: its only model is per-example."""
    return (f"{bundle.model_path}: exported with --per-example (every run takes one user per example), so it cannot "
            f"{what}; call edge_lorax.runtime.run_mixed(bundle, users, inputs) with a user per text, or re-export "
            "without --per-example")


def run_arrays(bundle: Bundle, user: LoadedUser | None, inputs: dict, outputs=None) -> dict:
    """Arrays in ({input_ids, attention_mask[, token_type_ids]}), {output name: array} out; thread-safe."""
    wanted = _wanted(bundle, outputs)
    return dict(zip(wanted, bundle.session.run(wanted, feeds_for(bundle, user, inputs))))


def run_adapter(bundle: Bundle, user: LoadedUser, inputs: dict, outputs=None) -> dict:
    """ONNX Runtime's own multi-LoRA path: the user's LoraAdapter activated through its RunOptions (numpy feeds)."""
    if user.run_options is None:
        raise UserError(f"{user.name}: not loaded from an {names.ADAPTER_SUFFIX} file; use run_arrays")
    wanted = _wanted(bundle, outputs)
    return dict(zip(wanted, bundle.session.run(wanted, _token_feeds(bundle, inputs), user.run_options)))


def _stack_users(bundle: Bundle, users: list) -> dict:
    """Per-example feeds: each coefficient input stacked along a new batch axis, one user per example."""
    if not bundle.per_example:
        raise InputError(f"{bundle.model_path}: takes one user per run; for a user per example (run_mixed) re-export the "
                         "bundle with --per-example")
    keys = [k for k, s in bundle.coeff_inputs.items() if s.per_example]
    for i, u in enumerate(users):
        check_user(bundle, u, f"users[{i}]")
        if any(k not in u.arrays for k in keys):
            raise UserError(f"{u.name}: lacks {next(k for k in keys if k not in u.arrays)}; mixed batches need full users")
    return {k: np.stack([u.arrays[k] for u in users]) for k in keys}  # (batch, ...): one copy per run


def run_mixed(bundle: Bundle, users: list, inputs: dict, outputs=None) -> dict:
    """One run, example i served with users[i] (per-example bundle); shared tensors (e.g. head) use the defaults."""
    tokens = _token_feeds(bundle, inputs)
    n = tokens[names.INPUT_IDS].shape[0]
    if not isinstance(users, (list, tuple)) or len(users) != n:
        raise InputError(f"{len(users) if isinstance(users, (list, tuple)) else 'no list of'} users for a batch of {n}; "
                         "give one user per example")
    feeds = {**tokens, **_stack_users(bundle, users)}
    wanted = _wanted(bundle, outputs)
    return dict(zip(wanted, bundle.session.run(wanted, feeds)))


def tokenizer(bundle: Bundle, max_length: int = 128):
    """The bundle's fast tokenizer (tokenizer.json), truncating at max_length; cached per file."""
    return load_tokenizer(bundle.path, check_max_length(bundle, max_length))


def _pad_id(bundle: Bundle, tok) -> int:
    pad = special_tokens(bundle.path).get("pad_token")
    tid = tok.token_to_id(pad) if pad else None
    return tid if tid is not None else int(bundle.model_config.get("pad_token_id") or 0)


def encode(bundle: Bundle, texts: list, max_length: int = 128) -> dict:
    """Texts -> right-padded int64 input_ids / attention_mask / token_type_ids (only those the graph takes)."""
    texts = _check_texts(texts)
    if not texts:
        raise InputError("texts is empty; pass at least one text")
    return _encode(bundle, texts, max_length)


def _encode(bundle: Bundle, texts: list, max_length: int) -> dict:
    """encode() for texts already checked (a non-empty list of str)."""
    tok = tokenizer(bundle, max_length)
    try:
        encs = tok.encode_batch(texts)
    except BaseException as e:  # a tokenizer.json that loads but cannot encode (edited normalizer, vocab, template)
        raise tokenizer_error(bundle.path / names.TOKENIZER_FILE, e) from e
    width = max(len(e.ids) for e in encs)
    ids = np.full((len(encs), width), _pad_id(bundle, tok), np.int64)
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


def _labels(bundle: Bundle, n: int, user: LoadedUser | None = None) -> list:
    """Class names: the user's own (its __meta__ labels, when its head has n classes), else the bundle's config."""
    if user is not None and user.labels and len(user.labels) == n:
        return list(user.labels)
    id2label = bundle.model_config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _to_predictions(bundle: Bundle, texts: list, outputs: dict, user: LoadedUser | None = None) -> list:
    """Logits -> labelled probabilities (1 logit: a regression score, `user`'s class names when it has its own);
    otherwise the first output as a vector."""
    if names.LOGITS not in outputs:
        first = outputs[bundle.outputs[0]]
        vecs = first[:, 0] if first.ndim == 3 else first  # last_hidden_state -> [CLS]; pooled features as they are
        return [Prediction(t, vector=[float(x) for x in v]) for t, v in zip(texts, vecs)]
    logits = outputs[names.LOGITS]
    if logits.shape[-1] == 1:
        return [Prediction(t, score=float(v[0])) for t, v in zip(texts, logits)]
    labels, probs = _labels(bundle, logits.shape[-1], user), _softmax(logits.astype(np.float64))
    return [Prediction(t, labels[int(p.argmax())], float(p.max()), {lab: round(float(x), 6) for lab, x in zip(labels, p)})
            for t, p in zip(texts, probs)]


def predict(bundle: Bundle, user: LoadedUser | None, texts: list, max_length: int = 128) -> list:
    """Text in, predictions out: tokenize with the bundle's tokenizer, run for `user`, label the outputs (with the
    user's own class names when it has them)."""
    return _predict(bundle, user, _check_texts(texts), check_max_length(bundle, max_length))


def _predict(bundle: Bundle, user: LoadedUser | None, texts: list, max_length: int) -> list:
    """predict() for texts and max_length already checked (predict_file checks texts before building the session)."""
    if bundle.manifest.get("task") == names.TASK_CAUSAL_LM:  # (batch, sequence, vocab) logits: nothing to label
        raise BundleError(f"{bundle.path}: a causal-lm bundle without a KV cache; `run` / predict label classes, scores "
                          "or features, so use run_arrays for its logits, or export a model type that gets a decoder "
                          f"bundle ({', '.join(architectures.kv_cache_types())}) and `edge-lorax generate`")
    if not texts:
        return []
    outputs = run_arrays(bundle, user, _encode(bundle, texts, max_length))
    return _to_predictions(bundle, texts, outputs, user)


def predict_file(bundle_path, coeffs, texts: list, profile: str = "default", max_length: int = 128,
                 said=None) -> list:
    """One-shot: open the bundle, load the user (None: bundle defaults), predict. What `edge-lorax run` calls.
    said(message): told which model file the profile picked (mobile falls back to fp32 when a bundle has no
    int8 / .ort variant)."""
    from edge_lorax.runtime.bundle import open_bundle
    from edge_lorax.runtime.users import load_user

    texts = _check_texts(texts)  # before the session is built
    bundle = open_bundle(Path(bundle_path), profile)
    if said is not None:
        said(f"model: {bundle.model_path.name} (profile {profile}, variant {bundle.config.variant})")
    max_length = check_max_length(bundle, max_length)
    if bundle.per_example:
        raise BundleError(per_example_refusal(bundle, "serve `run` (one user for every text)"))
    user = load_user(bundle, coeffs) if coeffs else None
    return _predict(bundle, user, texts, max_length)
