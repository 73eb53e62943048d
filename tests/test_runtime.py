"""The runtime on real bundles written by the exporter: users swapped on one session give the torch model's outputs,
text in / predictions out, the adapter-file and per-example paths, profiles, and concurrent mixed-user runs."""

import threading

import numpy as np
import pytest

from edge_lorax.formats import names
from edge_lorax.runtime import encode, load_user, open_bundle, predict, run_adapter, run_arrays, run_mixed
from edge_lorax.runtime.bundle import SessionConfig
from helpers.runtime import TEXTS, random_user, torch_logits

TOL = 1e-4  # fp32 ORT vs torch, the exporter's stated tolerance


@pytest.fixture(scope="module")
def batch(bundle):
    return encode(bundle, TEXTS)


@pytest.fixture(scope="module")
def expected(setup, batch):
    """The injected torch model's logits per user (the reference)."""
    return [torch_logits(setup.model, setup.subspace, random_user(setup.subspace, i), batch) for i in range(3)]


def test_bundle_inputs_come_from_the_session(bundle, setup):
    assert bundle.token_inputs == (names.INPUT_IDS, names.ATTENTION_MASK)
    assert set(bundle.coeff_inputs) == set(random_user(setup.subspace, 0).inputs())
    spec = bundle.coeff_inputs[names.coeff_name(next(iter(setup.subspace.modules)), names.COEFF_A)]
    assert spec.shape == (2, 4) and spec.has_default and not bundle.per_example
    assert bundle.fingerprint == setup.subspace.fingerprint and bundle.outputs == (names.LOGITS, names.HEAD_INPUT)


def test_swapped_users_match_torch(bundle, setup, batch, expected):
    users = [load_user(bundle, p) for p in setup.users]
    assert np.abs(expected[0] - expected[1]).max() > 0.1  # the users really differ
    for i in (0, 1, 2, 1, 0, 2):  # switch back and forth on one session
        got = run_arrays(bundle, users[i], batch)[names.LOGITS]
        assert np.abs(got - expected[i]).max() <= TOL, f"user {i}"


def test_no_user_runs_the_bundle_defaults(bundle, batch, expected):
    assert np.abs(run_arrays(bundle, None, batch)[names.LOGITS] - expected[0]).max() <= TOL  # exported with user0


def test_onnx_adapter_user_both_paths(bundle, setup, batch, expected):
    user = load_user(bundle, setup.bundle / f"user0{names.ADAPTER_SUFFIX}")
    assert user.adapter is not None and user.nbytes == load_user(bundle, setup.users[0]).nbytes
    assert np.abs(run_arrays(bundle, user, batch)[names.LOGITS] - expected[0]).max() <= TOL
    assert np.abs(run_adapter(bundle, user, batch)[names.LOGITS] - expected[0]).max() <= TOL


def test_predict_text(bundle, setup, expected):
    user = load_user(bundle, setup.users[1])
    preds = predict(bundle, user, TEXTS)
    probs = np.exp(expected[1]) / np.exp(expected[1]).sum(-1, keepdims=True)
    assert [p.text for p in preds] == TEXTS
    assert [p.label for p in preds] == [["negative", "positive"][i] for i in probs.argmax(-1)]
    np.testing.assert_allclose([p.score for p in preds], probs.max(-1), atol=1e-5)
    assert predict(bundle, user, []) == []


def test_tokenizer_matches_transformers(bundle, setup):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(setup.model)(TEXTS, padding=True, return_tensors="np")
    ours = encode(bundle, TEXTS)
    np.testing.assert_array_equal(ours[names.INPUT_IDS], hf["input_ids"])
    np.testing.assert_array_equal(ours[names.ATTENTION_MASK], hf["attention_mask"])


def test_per_example_batch_equals_separate_runs(setup, batch, expected):
    pe = open_bundle(setup.per_example)
    assert pe.per_example
    users = [load_user(pe, p) for p in setup.users]
    order = [2, 0, 1, 2]  # example i served with users[order[i]]
    got = run_mixed(pe, [users[i] for i in order], batch)[names.LOGITS]
    want = np.stack([expected[u][row] for row, u in enumerate(order)])
    assert np.abs(got - want).max() <= TOL
    with pytest.raises(ValueError, match="one user per example"):
        run_mixed(pe, users[:2], batch)


def test_mobile_profile_uses_int8_ort_one_thread(setup, batch, expected):
    mobile = open_bundle(setup.bundle, "mobile")
    assert mobile.model_path.name == names.BUNDLE_MODEL_INT8_ORT
    assert mobile.session.get_session_options().intra_op_num_threads == 1
    user = load_user(mobile, setup.users[2])
    got = run_arrays(mobile, user, batch)[names.LOGITS]
    assert np.abs(got - expected[2]).max() <= 0.25  # the exporter's int8 tolerance
    assert np.abs(got - expected[0]).max() > np.abs(got - expected[2]).max()  # still this user's output


def test_ort_format_variant_matches_torch(setup, batch, expected):
    ort_bundle = open_bundle(setup.bundle, SessionConfig(variant="ort"))
    assert ort_bundle.model_path.name == names.BUNDLE_MODEL_ORT and set(ort_bundle.coeff_inputs) == set(
        open_bundle(setup.bundle).coeff_inputs)
    got = run_arrays(ort_bundle, load_user(ort_bundle, setup.users[1]), batch)[names.LOGITS]
    assert np.abs(got - expected[1]).max() <= TOL


def test_threads_are_capped_at_usable_cores(setup):
    from edge_lorax.runtime.bundle import usable_cores

    b = open_bundle(setup.bundle, SessionConfig(threads=64))
    assert b.session.get_session_options().intra_op_num_threads == usable_cores()


def test_concurrent_alternating_users_one_session(bundle, setup, batch, expected):
    """8 threads × 500 runs, each run for a different user than the last, all on one session: 0 mismatches."""
    users = [load_user(bundle, p) for p in setup.users]
    mismatches, errors = [], []

    def work(tid: int):
        try:
            for i in range(500):
                u = (tid + i) % 3
                got = run_arrays(bundle, users[u], batch)[names.LOGITS]
                if np.abs(got - expected[u]).max() > TOL:
                    mismatches.append((tid, i, u))
        except Exception as e:  # surfaced below: a thread's exception must fail the test
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and mismatches == []
