"""Shared builders for the runtime tests: a tiny random BERT (with tokenizer), a random subspace over its q/v
projections, random users, and bundles written by the project's exporter."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.subspace import ModuleSubspace, Subspace, fingerprint_tensors
from edge_lorax.formats.user import User, write_user

WORDS = ["good", "bad", "great", "awful", "movie", "film", "the", "a", "was", "is", "not", "very", "i", "it", "love",
         "hate", "plot", "acting", "boring", "fun"]
K, R, HIDDEN, LAYERS = 4, 2, 32, 2
MODULES = [f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(LAYERS) for p in ("query", "value")]
MODEL_NAME = "tiny-bert"  # the model folder's name is its portable id: the subspace's base_model must match
TEXTS = ["the movie was great", "i hate the plot , very boring", "good fun", "a film"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz,.!?") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + WORDS + chars))}  # unique tokens, dense ids
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    return tok, len(vocab)


def tiny_model_dir(path: Path, num_labels: int = 2) -> Path:
    """A random 2-layer BERT sequence classifier + fast tokenizer, saved like a hub folder."""
    import torch
    import transformers
    from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

    from helpers import tiny_config

    transformers.logging.set_verbosity_error()
    tok, vocab = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = tiny_config("bert", HIDDEN, vocab, max_position_embeddings=256, num_labels=num_labels,
                      id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(path)
    return Path(path)


def _orthonormal(rng, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((cols, rows)))
    return np.ascontiguousarray(q.T.astype(np.float32))  # (rows, cols), orthonormal rows


def tiny_subspace(base_model: str = MODEL_NAME, seed: int = 0) -> Subspace:
    """A random K=4, r=2 subspace over the q/v projections; a different seed gives a different fingerprint."""
    rng = np.random.default_rng(seed)
    modules = {m: ModuleSubspace(_orthonormal(rng, K, HIDDEN), np.ascontiguousarray(_orthonormal(rng, K, HIDDEN).T),
                                 np.full(K, 0.25, np.float32), np.full(K, 0.25, np.float32), R, K) for m in MODULES}
    config = {"format_version": names.FORMAT_VERSION, "kind": "edge-lorax-subspace", "base_model": base_model,
              "mean": "drop", "seed": seed, "modules": {m: {"out": HIDDEN, "in": HIDDEN, "K": K, "r": R, "principal": K}
                                                        for m in MODULES}}
    tensors = {}
    for m, ms in modules.items():
        tensors[f"{m}.{names.COMPONENTS_A}"], tensors[f"{m}.{names.COMPONENTS_B}"] = ms.components_A, ms.components_B
        tensors[f"{m}.explained_A"], tensors[f"{m}.explained_B"] = ms.explained_A, ms.explained_B
    config["fingerprint"] = fingerprint_tensors(tensors, config)
    return Subspace(modules, config)


def random_user(subspace: Subspace, seed: int, scale: float = 2.0, labels: int = 2, head: bool = True) -> User:
    """Random coefficients large enough to move the tiny model's logits visibly; random head."""
    from helpers import random_user as make

    return make(subspace, 1000 + seed, labels=labels if head else 0, hidden=HIDDEN, scale=scale, dist="normal")


def save_user(subspace: Subspace, seed: int, path: Path, **kw) -> Path:
    return write_user(random_user(subspace, seed, **kw), path)


def torch_logits(model_dir: Path, subspace: Subspace, coeffs: User | None, batch: dict) -> np.ndarray:
    """The reference: the injected torch model (edge_lorax.inject) with the user's coefficients and head."""
    import torch

    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_model, write_head

    model = load_model(model_dir, num_labels=2)
    if coeffs is not None:
        inject_subspace(model, subspace, coeffs=coeffs.coefficients)
        write_head(model, coeffs.head)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(batch[names.INPUT_IDS]),
                    attention_mask=torch.from_numpy(batch[names.ATTENTION_MASK]))
    return out.logits.numpy()


def write_manifest(bundle: Path, fingerprint: str, **extra):
    (bundle / names.BUNDLE_MANIFEST).write_text(json.dumps({"fingerprint": fingerprint, "mode": "shared", **extra}))


@dataclass(frozen=True)
class Setup:
    """Everything the runtime tests share, built once per session by the project's exporter."""

    root: Path
    model: Path
    subspace: Subspace
    subspace_dir: Path
    users: tuple  # user{i}.npz paths; user0 is the bundle's default
    bundle: Path  # shared coefficients: fp32, int8 and both as .ort
    per_example: Path  # per-example bundle


_CACHE = {}


def get_setup(tmp_path_factory) -> Setup:
    """Tiny model, subspace, three users, a shared bundle (fp32 + int8) and a per-example bundle (~6 s, cached)."""
    if "setup" not in _CACHE:
        from edge_lorax.export import export_bundle
        from edge_lorax.formats.subspace import write_subspace

        root = tmp_path_factory.mktemp("runtime")
        model = tiny_model_dir(root / MODEL_NAME)
        sub = tiny_subspace()
        write_subspace(sub, root / "subspace")
        users = tuple(save_user(sub, i, root / f"user{i}.npz") for i in range(3))
        bundle = export_bundle(model, root / "subspace", root / "bundle", users[0], quantize="int8", ort_format=True,
                               gradient=True)
        per_example = export_bundle(model, root / "subspace", root / "bundle-pe", users[0], per_example=True)
        _CACHE["setup"] = Setup(root, model, sub, root / "subspace", users, Path(bundle), Path(per_example))
    return _CACHE["setup"]
