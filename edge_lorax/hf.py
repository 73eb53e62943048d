"""Choosing a user of a bundle through the Hugging Face classes that open it: optimum's `ORTModelFor*` (decoder
bundles through `ORTModelForCausalLM`, whose KV-cache loop and `generate` are optimum's) and sentence-transformers'
ONNX backend (`SentenceTransformer(bundle, backend="onnx")`).

Those classes run the bundle's default user (the coefficient inputs' initializers). `with_user(model, user)` binds
another user: the model's ONNX Runtime session is wrapped once by a thin proxy whose `run` adds the user's preloaded
arrays to the feeds, as the runtime's own runs do; a later `with_user` on the same model only swaps the arrays
(no session reload, no file read for a loaded user). Users are loaded and checked by the runtime
(`edge_lorax.runtime.users`): a user of another subspace is refused with one line. Imports neither optimum nor
sentence-transformers (duck-typed: anything with an ONNX Runtime `session` and `path`).

    from optimum.onnxruntime import ORTModelForSequenceClassification
    from edge_lorax.hf import with_user
    model = with_user(ORTModelForSequenceClassification.from_pretrained("bundle"), "alice.npz")
    st = with_user(SentenceTransformer("features-bundle", backend="onnx"), "bob.npz")
    llm = with_user(ORTModelForCausalLM.from_pretrained("decoder-bundle"), "alice.onnx_adapter")  # then llm.generate

Does not: IO binding (`use_io_binding=True` bypasses the feeds and ONNX Runtime ignores adapters there: refused),
per-example bundles (one user per run here; a --per-example decoder bundle too).
"""

import os
from pathlib import Path

from edge_lorax.formats.errors import InputError
from edge_lorax.runtime.bundle import Bundle, bundle_of_session
from edge_lorax.runtime.infer import check_user, per_example_refusal
from edge_lorax.runtime.users import LoadedUser, make_user
from edge_lorax.runtime.users import load_user as _load_user

__all__ = ["with_user", "load_user", "ort_model_of"]


class UserSession:
    """An ONNX Runtime session whose runs also feed `user`'s arrays (None: the bundle's defaults); everything else is
    the wrapped session's."""

    def __init__(self, session, bundle: Bundle, labels=None):
        self._session, self.bundle, self.user = session, bundle, None
        self.labels = labels  # the config's (id2label, label2id) as loaded: restored for a user without its own

    def run(self, output_names, input_feed, run_options=None):
        if self.user is not None:
            input_feed = {**input_feed, **self.user.arrays}
        return self._session.run(output_names, input_feed, run_options)

    def __getattr__(self, name):
        return getattr(self._session, name)


def ort_model_of(model):
    """The optimum ORTModel inside `model`: the model itself, or the first module of a SentenceTransformer whose
    `model` (or `auto_model`) has an ONNX Runtime session; one line when there is none."""
    if _is_ort_model(model):
        return model
    for module in (model if hasattr(model, "__iter__") and hasattr(model, "_modules") else ()):
        for attr in ("model", "auto_model"):
            inner = getattr(module, attr, None)
            if _is_ort_model(inner):
                return inner
    raise InputError(f"{type(model).__name__}: no ONNX Runtime session inside; pass an optimum ORTModelFor* or a "
                     "SentenceTransformer loaded with backend=\"onnx\" from an edge-lorax bundle folder")


def _is_ort_model(obj) -> bool:
    return obj is not None and hasattr(getattr(obj, "session", None), "run") and hasattr(obj, "path")


def _bound(model) -> tuple:
    """(ORTModel, its UserSession): the session wrapped on first use, checked as a bundle (manifest, fingerprint)."""
    ort_model = ort_model_of(model)
    if getattr(ort_model, "use_io_binding", False):
        raise InputError(f"{ort_model.path}: IO binding bypasses the user's feeds; load the model with "
                         "use_io_binding=False to choose a user")
    if not isinstance(ort_model.session, UserSession):
        bundle = bundle_of_session(ort_model.session, ort_model.path)
        if bundle.per_example:
            raise InputError(per_example_refusal(bundle, "bind one user per run (with_user)"))
        config = getattr(ort_model, "config", None)
        labels = (dict(config.id2label), dict(config.label2id)) if getattr(config, "id2label", None) else None
        ort_model.session = UserSession(ort_model.session, bundle, labels)
    return ort_model, ort_model.session


def load_user(model, user, name: str | None = None) -> LoadedUser:
    """A user for the bundle `model` serves: a `user.npz` / `.onnx_adapter` path (runtime.load_user), a dict of arrays
    by input name (runtime.make_user) or a LoadedUser of this subspace; checked now, refused with one line."""
    _, session = _bound(model)
    bundle = session.bundle
    if isinstance(user, LoadedUser):
        check_user(bundle, user)
        return user
    if isinstance(user, (str, os.PathLike)):
        return _load_user(bundle, Path(user), name)
    if isinstance(user, dict):
        return make_user(bundle, user, name or "user")
    raise InputError(f"a user is a user.npz / .onnx_adapter path, a dict of arrays or a LoadedUser, got {type(user).__name__}")


def with_user(model, user):
    """Bind `user` (see load_user; None: the bundle's default user) to an optimum ORTModel or an ONNX
    SentenceTransformer, in place; returns `model`. Swapping is an attribute write (no session reload). A user with its
    own class names sets the model config's id2label / label2id (others get the bundle's back)."""
    ort_model, session = _bound(model)
    loaded = None if user is None else load_user(model, user)
    session.user = loaded
    config = getattr(ort_model, "config", None)
    if config is not None and session.labels is not None:
        labels = loaded.labels if loaded is not None else None
        id2label, label2id = ((dict(enumerate(labels)), {lab: i for i, lab in enumerate(labels)}) if labels
                              else session.labels)
        config.id2label, config.label2id = dict(id2label), dict(label2id)
    return model
