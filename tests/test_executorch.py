"""The ExecuTorch target (`edge-lorax export --target executorch`) on a tiny random BERT: the .pte program equals the
ONNX bundle and torch (<= 1e-5) for real users bound by the manifest's order, two users swap on one loaded program,
a user without a head gets the bundle's default head, and what the target does not offer is refused before any work.
Lowering takes a minute or two of CPU (ExecuTorch's passes), so the tests that lower are marked slow; the refusals are
not.
"""

import json

import numpy as np
import pytest

pytest.importorskip("executorch")
torch = pytest.importorskip("torch")

from edge_lorax.export import export_bundle  # noqa: E402
from edge_lorax.export import graph as g  # noqa: E402
from edge_lorax.formats import names  # noqa: E402
from edge_lorax.formats.bundle import BundleError, read_manifest  # noqa: E402
from edge_lorax.formats.errors import InputError  # noqa: E402
from edge_lorax.formats.subspace import read_subspace  # noqa: E402
from edge_lorax.formats.user import User, UserError, write_user  # noqa: E402
from edge_lorax.runtime import load_user, open_bundle, run_arrays  # noqa: E402
from edge_lorax.runtime.pte import method_inputs, user_tensors  # noqa: E402
from helpers import random_user  # noqa: E402
from helpers.tiny import tiny_setup  # noqa: E402

LABELS = 3


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_setup("bert", tmp_path_factory.mktemp("et"))


@pytest.fixture(scope="module")
def users(bert, tmp_path_factory):
    """Two seeded users with their own 3-label heads, and one without a head."""
    root, sub = tmp_path_factory.mktemp("users"), read_subspace(bert.subspace)
    a, b = (write_user(random_user(sub, s, labels=LABELS, scale=1.0), root / f"u{s}.npz") for s in (1, 2))
    plain = random_user(sub, 3, scale=1.0)
    return a, b, write_user(User(plain.fingerprint, plain.coefficients), root / "nohead.npz")


@pytest.fixture(scope="module")
def bundles(bert, users, tmp_path_factory):
    """(the .pte bundle, the ONNX bundle) of the same subspace and task; user a is the export default."""
    root = tmp_path_factory.mktemp("bundles")
    pte = export_bundle(bert.model, bert.subspace, root / "pte", users[0], target="executorch")
    onnx_bundle = export_bundle(bert.model, bert.subspace, root / "onnx", users[0])
    return pte, onnx_bundle


def _program(pte):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(pte / "model.pte")).load_method("forward")


def _tokens(batch=3, seq=9, seed=5) -> dict:
    return g.sample_tokens(99, batch=batch, seq=seq, seed=seed)


def _run(method, pte, tokens, user_path):
    args = method_inputs(pte, tokens, user_tensors(pte, user_path))
    return method.execute([torch.from_numpy(a) for a in args])[0].numpy()  # logits (batch, labels)


@pytest.mark.slow
def test_pte_equals_onnx_and_torch_for_two_users(bert, users, bundles):
    pte, onnx_bundle = bundles
    method, ort_bundle = _program(pte), open_bundle(onnx_bundle)
    sub = read_subspace(bert.subspace)
    for user_path in users[:2]:
        tokens = _tokens()
        got = _run(method, pte, tokens, user_path)
        onnx_out = run_arrays(ort_bundle, load_user(ort_bundle, user_path), tokens)[names.LOGITS]
        user = User(sub.fingerprint, *_split(np.load(user_path)))
        prepared = g.prepare(*g.load_task_model(bert.model, "classification", LABELS), sub, user, "classification", False)
        with torch.no_grad():
            want = prepared.wrapper(*(torch.from_numpy(tokens[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK)),
                                    *(torch.from_numpy(prepared.defaults[n]) for n in prepared.spec.feed_names))[0].numpy()
        assert got.shape == (3, LABELS)
        assert np.abs(got - onnx_out).max() <= 1e-5
        assert np.abs(got - want).max() <= 1e-5


def _split(npz) -> tuple:
    arrays = {k: np.asarray(npz[k]) for k in npz.files if k != names.META_KEY}
    return ({k: v for k, v in arrays.items() if not k.startswith(names.HEAD_PREFIX)},
            {k: v for k, v in arrays.items() if k.startswith(names.HEAD_PREFIX)})


@pytest.mark.slow
def test_two_users_swap_on_one_loaded_program(users, bundles):
    pte, _ = bundles
    method, tokens = _program(pte), _tokens(batch=2, seq=12, seed=7)
    first = {u: _run(method, pte, tokens, u) for u in users[:2]}
    again = [_run(method, pte, tokens, u) for u in (users[1], users[0], users[1])]
    assert np.abs(first[users[0]] - first[users[1]]).max() > 1e-2  # the users differ
    np.testing.assert_array_equal(again[0], first[users[1]])
    np.testing.assert_array_equal(again[1], first[users[0]])
    np.testing.assert_array_equal(again[2], first[users[1]])
    short = _run(method, pte, _tokens(batch=1, seq=4, seed=8), users[0])  # another shape, same loaded program
    assert short.shape == (1, LABELS)


@pytest.mark.slow
def test_int8_program_keeps_the_users_as_inputs(bert, users, bundles, tmp_path):
    """--quantize int8 (XNNPACKQuantizer, dynamic): the base Linear weights go int8, the coefficient path stays fp32,
    so each user's output stays near the fp32 program's and two users still differ by far more than int8 noise."""
    pte, _ = bundles
    q = export_bundle(bert.model, bert.subspace, tmp_path / "int8", users[0], target="executorch", quantize="int8")
    manifest = read_manifest(q)
    assert manifest["method"]["precision"] == "int8" and set(manifest["verification"]) == {"int8", "int8_vs_onnx"}
    assert all(c["response"] >= 0.99 for c in manifest["verification"].values())
    method, exact, tokens = _program(q), _program(pte), _tokens(batch=2, seq=12, seed=7)
    got = {u: _run(method, q, tokens, u) for u in users[:2]}
    want = {u: _run(exact, pte, tokens, u) for u in users[:2]}
    noise = max(np.abs(got[u] - want[u]).max() for u in users[:2])
    assert 0 < noise <= 0.05  # quantised, and close
    assert np.abs(got[users[0]] - got[users[1]]).max() > 10 * noise


@pytest.mark.slow
def test_manifest_order_and_default_head(users, bundles):
    pte, onnx_bundle = bundles
    manifest, onnx_manifest = read_manifest(pte), read_manifest(onnx_bundle)
    assert manifest["target"] == "executorch" and manifest["files"]["pte"] == "model.pte"
    assert [u["name"] for u in manifest["user_inputs"]] == [u["name"] for u in onnx_manifest["user_inputs"]]
    assert manifest["user_inputs"][-2:] == [{"name": names.HEAD_WEIGHT_T, "shape": [32, LABELS], "dtype": "float32",
                                             "default": False}, {"name": names.HEAD_BIAS, "shape": [LABELS],
                                                                 "dtype": "float32", "default": False}]
    assert all(c["max_abs_diff"] <= 1e-5 and c["response"] > 0.99 for c in manifest["verification"].values())
    method = _program(pte)
    assert method.metadata.num_inputs() == len(manifest["inputs"])
    no_head, with_default = user_tensors(pte, users[2]), user_tensors(pte, users[0])
    np.testing.assert_array_equal(no_head[-1], with_default[-1])  # the export default's (user a's) head
    assert not np.array_equal(no_head[0], with_default[0])
    tokens = _tokens(batch=1, seq=6)
    assert np.isfinite(_run(method, pte, tokens, users[2])).all()


@pytest.mark.slow
def test_pte_reader_refuses_other_bundles_and_users(bert, bundles, tmp_path):
    pte, onnx_bundle = bundles
    with pytest.raises(BundleError, match="onnx-encoder bundle"):
        user_tensors(onnx_bundle, bert.user)
    other = random_user(read_subspace(bert.subspace), 4)
    stranger = write_user(User("0123456789abcdef", other.coefficients), tmp_path / "stranger.npz")
    with pytest.raises(UserError, match="stranger.npz"):
        user_tensors(pte, stranger)
    with pytest.raises(InputError, match="user tensors"):
        method_inputs(pte, _tokens(), [])
    manifest = json.loads((pte / "manifest.json").read_text())
    assert manifest["method"]["backend"] == "XnnpackBackend"


@pytest.mark.parametrize("options, message", [
    ({"quantize": "int4"}, "--quantize int4"), ({"per_example": True}, "--per-example"), ({"fused": True}, "--fuse"),
    ({"ort_format": True}, "--ort-format"), ({"task": "causal-lm"}, "KV-cache model types"),
])
def test_refused_before_any_work(bert, tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        export_bundle(bert.model, bert.subspace, tmp_path / "out", target="executorch", **{"task": "features", **options})
    assert not (tmp_path / "out").exists()


def test_unknown_or_mismatched_target_refused(bert, tmp_path):
    with pytest.raises(InputError, match="--target must be one of"):
        export_bundle(bert.model, bert.subspace, tmp_path / "a", task="features", target="tflite")
    with pytest.raises(InputError, match="exported as onnx-encoder"):
        export_bundle(bert.model, bert.subspace, tmp_path / "b", task="features", target="genai-decoder")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
