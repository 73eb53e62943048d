"""Bundles opened by the Hugging Face classes (issue 15): optimum's ORTModelFor* and sentence-transformers' ONNX
backend run the bundle's default user, and edge_lorax.hf.with_user chooses another, with the runtime's outputs; the
decoder (KV-cache) bundle through ORTModelForCausalLM and AutoTokenizer, against a plain session and the runtime's
greedy generation (the tiny Llama bundle of test_llm_bundle.py, conftest's decoder_bundle: ~15 s when built here).

Needs the interop environment (`bash scripts/setup-optimum.sh`, `.venv-optimum`: optimum-onnx + sentence-transformers
on transformers 4.57; `bash scripts/test-optimum.sh`); skipped where they are absent, so the default `.venv` stays green.
"""

import dataclasses
import json
import os
import shutil
import time

import numpy as np
import pytest

if os.environ.get("EDGE_LORAX_REQUIRE_HF"):  # scripts/test-optimum.sh: a broken interop environment fails, never skips
    import onnxruntime_genai  # noqa: F401  (the decoder bundle's builder and the runtime's generation)
    import optimum.onnxruntime  # noqa: F401
    import sentence_transformers  # noqa: F401
pytest.importorskip("optimum.onnxruntime")
pytest.importorskip("sentence_transformers")

from edge_lorax import hf  # noqa: E402
from edge_lorax.export import export_bundle  # noqa: E402
from edge_lorax.formats import names  # noqa: E402
from edge_lorax.formats.errors import InputError  # noqa: E402
from edge_lorax.formats.subspace import write_subspace  # noqa: E402
from edge_lorax.formats.user import write_user  # noqa: E402
from edge_lorax.runtime import encode, load_user, open_bundle, run_arrays  # noqa: E402
from helpers.runtime import TEXTS, random_user, tiny_model_dir, tiny_subspace  # noqa: E402

TOL = 1e-5  # issue 15: max abs diff of optimum / sentence-transformers outputs against the runtime's


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Tiny BERT, subspace, two classifier users (own class names) and two features users; a classifier bundle
    (default: user a) and two features bundles: one on the plain model folder, one on a copy carrying MiniLM's
    sentence-transformers files (mean pooling, then Normalize)."""
    root = tmp_path_factory.mktemp("hf")
    model = tiny_model_dir(root / "tiny-bert")
    sub = tiny_subspace()
    write_subspace(sub, root / "subspace")
    users = {}
    for i, who in enumerate("ab"):
        u = random_user(sub, 10 + i)
        users[who] = write_user(dataclasses.replace(u, meta={"labels": [f"{who}-no", f"{who}-yes"]}), root / f"{who}.npz")
        users[f"f{who}"] = write_user(random_user(sub, 20 + i, head=False), root / f"f{who}.npz")
    classifier = export_bundle(model, root / "subspace", root / "cls", users["a"])
    features = export_bundle(model, root / "subspace", root / "feat", users["fa"])
    st_model = root / "st" / "tiny-bert"
    shutil.copytree(model, st_model)
    (st_model / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (st_model / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (st_model / "1_Pooling").mkdir()
    (st_model / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                    "pooling_mode_mean_tokens": True}))
    normalized = export_bundle(st_model, root / "subspace", root / "feat-st", users["fa"])
    return {"root": root, "subspace": sub, "users": users, "cls": classifier, "feat": features, "feat_st": normalized}


def _runtime(bundle_dir, user_path, output: str) -> np.ndarray:
    bundle = open_bundle(bundle_dir)
    user = load_user(bundle, user_path) if user_path else None
    return run_arrays(bundle, user, encode(bundle, TEXTS), [output])[output]


def _tokens(bundle_dir) -> dict:
    return encode(open_bundle(bundle_dir), TEXTS)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def test_features_bundle_files(made):
    """The features graph adds last_hidden_state; the bundle carries sentence-transformers' files, listed."""
    manifest = json.loads((made["feat"] / names.BUNDLE_MANIFEST).read_text())
    assert [o["name"] for o in manifest["outputs"]] == [names.FEATURES, names.LAST_HIDDEN_STATE]
    assert manifest["files"]["sentence_transformers"] == ["1_Pooling/config.json", "modules.json", "sentence_bert_config.json"]
    modules = json.loads((made["feat"] / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    copied = json.loads((made["feat_st"] / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in copied] == ["Transformer", "Pooling", "Normalize"]
    assert sorted(p.name for p in made["feat"].glob("**/*.onnx")) == ["model.onnx"]  # one model file, no copy


def test_optimum_classifier_default_user(made):
    """ORTModelForSequenceClassification on the bundle: the default user's logits and class names."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    model = ORTModelForSequenceClassification.from_pretrained(made["cls"])
    assert model.config.id2label == {0: "a-no", 1: "a-yes"}
    got = model(**_tokens(made["cls"])).logits
    assert np.abs(np.asarray(got) - _runtime(made["cls"], None, names.LOGITS)).max() <= TOL


def test_optimum_features_default_user(made):
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    model = ORTModelForFeatureExtraction.from_pretrained(made["feat"])
    got = np.asarray(model(**_tokens(made["feat"])).last_hidden_state)
    assert np.abs(got - _runtime(made["feat"], None, names.LAST_HIDDEN_STATE)).max() <= TOL


@pytest.mark.parametrize("key", ["feat", "feat_st"])
def test_sentence_transformers_default_user(made, key):
    """SentenceTransformer(bundle, backend="onnx") loads with no extra argument and gives the runtime's features
    (L2-normalised where the model's modules.json says Normalize)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(made[key]), backend="onnx", device="cpu")
    want = _runtime(made[key], None, names.FEATURES)
    want = _normalize(want) if key == "feat_st" else want
    assert np.abs(st.encode(TEXTS) - want).max() <= TOL


def test_with_user_optimum_classifier(made):
    """Two users through one ORTModel: each equals the runtime's logits, they differ, and labels follow the user."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    model = ORTModelForSequenceClassification.from_pretrained(made["cls"])
    tokens, session = _tokens(made["cls"]), None
    outs = {}
    for who in "ba":
        hf.with_user(model, made["users"][who])
        session = session or model.session
        assert model.session is session  # bound once: a swap never reloads
        outs[who] = np.asarray(model(**tokens).logits)
        assert np.abs(outs[who] - _runtime(made["cls"], made["users"][who], names.LOGITS)).max() <= TOL
        assert model.config.id2label == {0: f"{who}-no", 1: f"{who}-yes"}
    assert np.abs(outs["a"] - outs["b"]).max() > 1e-2
    hf.with_user(model, None)  # back to the defaults (= user a)
    assert np.abs(np.asarray(model(**tokens).logits) - outs["a"]).max() <= TOL


def test_with_user_adapter_and_loaded(made):
    """An .onnx_adapter file and a preloaded user work too; a preloaded swap costs microseconds."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    model = ORTModelForSequenceClassification.from_pretrained(made["cls"])
    adapter = made["cls"] / ("a" + names.ADAPTER_SUFFIX)
    tokens = _tokens(made["cls"])
    hf.with_user(model, adapter)
    assert np.abs(np.asarray(model(**tokens).logits) - _runtime(made["cls"], made["users"]["a"], names.LOGITS)).max() <= TOL
    users = [hf.load_user(model, made["users"][w]) for w in "ab"]
    t0 = time.perf_counter()
    for i in range(200):
        hf.with_user(model, users[i % 2])
    assert (time.perf_counter() - t0) / 200 < 1e-3  # no session reload, no file read


@pytest.mark.parametrize("key", ["feat", "feat_st"])
def test_with_user_features(made, key):
    """Two users through ORTModelForFeatureExtraction and SentenceTransformer: the runtime's outputs, and they differ."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from sentence_transformers import SentenceTransformer

    ort_model = ORTModelForFeatureExtraction.from_pretrained(made[key])
    st = SentenceTransformer(str(made[key]), backend="onnx", device="cpu")
    tokens, outs = _tokens(made[key]), {}
    for who in ("fb", "fa"):
        path = made["users"][who]
        hidden = np.asarray(hf.with_user(ort_model, path)(**tokens).last_hidden_state)
        assert np.abs(hidden - _runtime(made[key], path, names.LAST_HIDDEN_STATE)).max() <= TOL
        want = _runtime(made[key], path, names.FEATURES)
        outs[who] = hf.with_user(st, path).encode(TEXTS)
        assert np.abs(outs[who] - (_normalize(want) if key == "feat_st" else want)).max() <= TOL
    assert np.abs(outs["fa"] - outs["fb"]).max() > 1e-3


def test_with_user_refusals(made):
    """Another subspace's user, a misshaped one, IO binding and a non-model are refused with one line."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTModelForSequenceClassification

    from edge_lorax.runtime.users import UserError

    model = ORTModelForSequenceClassification.from_pretrained(made["cls"])
    other = write_user(random_user(tiny_subspace(seed=1), 0), made["root"] / "other.npz")
    with pytest.raises(UserError, match="re-project or retrain") as e:
        hf.with_user(model, other)
    assert "\n" not in str(e.value)
    loaded = load_user(open_bundle(made["feat"]), made["users"]["fa"])  # a features user: no head, same subspace
    with pytest.raises(UserError):
        hf.with_user(model, loaded.arrays | {names.HEAD_BIAS: np.zeros(3, np.float32)})
    with pytest.raises(InputError, match="no ONNX Runtime session"):
        hf.with_user(object(), made["users"]["a"])
    binding = ORTModelForFeatureExtraction.from_pretrained(made["feat"], use_io_binding=True)
    with pytest.raises(InputError, match="use_io_binding=False"):
        hf.with_user(binding, made["users"]["fa"])


# ------------------------------------------------------------------------------- decoder (KV-cache) bundle: causal LM

PROMPT = "w5 w9 w11 w3"


@pytest.fixture(scope="module")
def decoder(decoder_bundle):
    """(root, bundle folder, ORTModelForCausalLM on it): users u3 (the bundle's defaults, also u3.onnx_adapter) and u0."""
    pytest.importorskip("onnxruntime_genai")
    from optimum.onnxruntime import ORTModelForCausalLM

    root, _ = decoder_bundle
    return root, root / "bundle", ORTModelForCausalLM.from_pretrained(root / "bundle")


def _decoder_users(root, bundle) -> dict:
    """User name -> what with_user is given: u0 as user.npz, u3 as the bundle's .onnx_adapter."""
    return {"u0": root / "u0.npz", "u3": bundle / ("u3" + names.ADAPTER_SUFFIX)}


def _plain_logits(bundle, root, who: str, ids: list) -> np.ndarray:
    """Prefill logits (1, T, vocab) of a plain ONNX Runtime session fed the user's arrays and an empty KV cache."""
    import onnxruntime as ort

    from edge_lorax.export.llm_bundle import prefill_feeds
    from edge_lorax.formats.user import read_user

    config = json.loads((bundle / "genai_config.json").read_text())
    session = ort.InferenceSession(str(bundle / names.BUNDLE_MODEL), providers=["CPUExecutionProvider"])
    return session.run([names.LOGITS], {**prefill_feeds(ids, config), **read_user(root / f"{who}.npz").inputs()})[0]


def test_optimum_causal_lm_logits_per_user(decoder):
    """ORTModelForCausalLM: the defaults are u3; with_user binds u0 (npz) and u3 (.onnx_adapter) on one session, each
    giving the plain session's first-step logits (≤ 1e-5); the users differ; KV inputs are neither tokens nor a user's."""
    import torch

    root, bundle, model = decoder
    ids = [5, 9, 11, 3, 40, 7, 7]
    tokens = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.int64)}
    default = model(**tokens).logits.numpy()
    assert np.abs(default - _plain_logits(bundle, root, "u3", ids)).max() <= TOL
    outs, session = {}, None
    for who, user in _decoder_users(root, bundle).items():
        outs[who] = hf.with_user(model, user)(**tokens).logits.numpy()
        session = session or model.session
        assert model.session is session  # bound once: a swap never reloads
        assert np.abs(outs[who] - _plain_logits(bundle, root, who, ids)).max() <= TOL, who
    assert np.abs(outs["u0"] - outs["u3"]).max() > 1e-2
    wrapped = model.session.bundle
    assert sorted(wrapped.kv_inputs) == [f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")]
    manifest = json.loads((bundle / names.BUNDLE_MANIFEST).read_text())
    assert set(wrapped.coeff_inputs) == set(manifest["coefficients"]) and wrapped.token_inputs == ("input_ids", "attention_mask")


def test_optimum_causal_lm_generates_the_runtime_tokens(decoder):
    """AutoTokenizer on the bundle gives the runtime's ids (no token_type_ids); greedy generate (8 new tokens) per user
    equals edge_lorax.runtime.llm's greedy tokens (the runtime stops before EOS, generate after it)."""
    from transformers import AutoTokenizer

    from edge_lorax.runtime.llm import load_llm

    root, bundle, model = decoder
    users = _decoder_users(root, bundle)
    llm = load_llm(bundle, threads=1)
    llm.add_user("u0", users["u0"])
    tok = AutoTokenizer.from_pretrained(bundle)
    enc = tok(PROMPT, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"} and enc["input_ids"][0].tolist() == llm.encode(PROMPT)
    eos, got = llm.manifest["eos_token_id"], {}
    for who, name in (("u0", "u0"), ("u3", None)):
        out = hf.with_user(model, users[who]).generate(**enc, max_new_tokens=8, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        got[who] = new[:new.index(eos)] if eos in new else new
        assert got[who] == list(llm.generate(PROMPT, name, 8)), who
