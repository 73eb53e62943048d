"""builder.probe: mean-pooled frozen features (tiny random BERT and Llama) and the logistic-regression probe whose C is
picked on the validation split."""

import numpy as np
import pytest
import torch

from edge_lorax.builder.data import CLASSIFICATION, REGRESSION, Split, Task
from edge_lorax.builder.probe import C_GRID, fit_features, fit_probe, load_encoder, pooled_features
from edge_lorax.formats.errors import InputError

TEXTS = ["the movie was great", "i hate the plot , very boring", "good fun", "a film", "not very good acting",
         "i love it"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from helpers.runtime import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("probe") / "tiny-bert")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, bert_dir):
    """A tiny random LlamaForCausalLM folder with the tiny BERT's fast tokenizer (it has a [PAD] token)."""
    from transformers import AutoTokenizer

    from helpers.tiny import tiny_model

    out = tiny_model("llama", tmp_path_factory.mktemp("probe") / "tiny-llama")
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(out)
    return out


def _manual_mean(model_dir, text):
    """The reference: one text alone (no padding), mean of the last hidden state over its tokens."""
    model, tok = load_encoder(model_dir)
    with torch.no_grad():
        enc = tok([text], return_tensors="pt")
        return model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).last_hidden_state[0].mean(0).numpy()


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_pooled_features_mean_over_real_tokens_in_text_order(arch, bert_dir, llama_dir):
    folder = bert_dir if arch == "bert" else llama_dir
    x = pooled_features(folder, TEXTS, max_length=32, batch_size=4)
    assert x.shape == (len(TEXTS), 32) and x.dtype == np.float32
    # padded batches give each text's unpadded mean: padding and batch order do not leak into a row
    for i in (0, 1, 3):
        np.testing.assert_allclose(x[i], _manual_mean(folder, TEXTS[i]), atol=1e-5)
    np.testing.assert_allclose(pooled_features(folder, TEXTS[::-1], 32, 2), x[::-1], atol=1e-5)
    assert np.abs(x[0] - x[2]).max() > 1e-3  # different text, different features


def test_pooled_features_truncate_at_max_length(bert_dir):
    long = " ".join(["good"] * 40)
    short = pooled_features(bert_dir, [long, " ".join(["good"] * 50)], max_length=8)
    np.testing.assert_allclose(short[0], short[1], atol=1e-6)  # both cut to the same 8 tokens
    assert np.abs(short[0] - pooled_features(bert_dir, [long], max_length=32)[0]).max() > 1e-4


def _blobs(n, seed, flip=False):
    """Two well separated Gaussian blobs in 8-d (class 1 shifted by +4 along every axis); 70 % class 0."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    x = rng.standard_normal((n, 8)).astype(np.float32) + 4.0 * y[:, None]
    return x, (np.zeros_like(y) if flip else y)


def test_separable_features_reach_100_percent():
    (tx, ty), (vx, vy), (sx, sy) = _blobs(200, 0), _blobs(60, 1), _blobs(60, 2)
    result = fit_features(tx, ty, vx, vy, sx, sy)
    assert result["validation_accuracy"] == 1.0 and result["test_accuracy"] == 1.0 and result["test_macro_f1"] == 1.0
    assert [g["c"] for g in result["grid"]] == sorted(C_GRID) and all(g["converged"] for g in result["grid"])
    assert result["c"] == min(g["c"] for g in result["grid"] if g["validation_accuracy"] == 1.0)  # ties: smallest C


def test_c_is_picked_on_validation_not_test():
    """A tiny C predicts the training majority (class 0) everywhere; a large C separates the blobs. Validation labels
    that are all 0 make the tiny C best; true labels make a large C best; the test split never moves the pick."""
    (tx, ty), (vx, vy), (sx, sy) = _blobs(200, 0), _blobs(60, 1), _blobs(60, 2)
    grid = (1e-5, 10.0)
    true_val = fit_features(tx, ty, vx, vy, sx, sy, c_grid=grid)
    all_zero_val = fit_features(tx, ty, vx, np.zeros_like(vy), sx, sy, c_grid=grid)
    assert true_val["c"] == 10.0 and all_zero_val["c"] == 1e-5
    assert all_zero_val["validation_accuracy"] == 1.0 and all_zero_val["test_accuracy"] == pytest.approx(1 - sy.mean())
    # all-majority predictions: F1 of class 0 = 2p/(1+p) with p its share, class 1 scores 0; macro = the mean
    p = 1 - sy.mean()
    assert all_zero_val["test_macro_f1"] == pytest.approx(p / (1 + p))
    assert true_val["test_accuracy"] == 1.0
    flipped_test = fit_features(tx, ty, vx, vy, sx, 1 - sy, c_grid=grid)
    assert flipped_test["c"] == 10.0 and flipped_test["test_accuracy"] == 0.0  # test labels scored, never used to pick
    for r in (true_val, all_zero_val):
        assert r["validation_accuracy"] == max(g["validation_accuracy"] for g in r["grid"])


def test_fit_features_refuses_one_class_or_no_validation():
    x, y = _blobs(50, 0)
    with pytest.raises(InputError, match="two classes"):
        fit_features(x, np.zeros_like(y), x, y)
    with pytest.raises(InputError, match="validation"):
        fit_features(x, y, x[:0], y[:0])


def _task(kind=CLASSIFICATION):
    """good/great sentences positive, bad/awful negative; the tiny tokenizer knows these words."""
    pos = ["good fun", "great movie", "i love the film", "very good acting", "great plot", "the film was good"]
    neg = ["bad plot", "awful film", "i hate the movie", "very bad acting", "boring plot", "the film was awful"]

    def split(p, n):
        texts = tuple(pos[i] for i in p) + tuple(neg[i] for i in n)
        targets = np.array([1] * len(p) + [0] * len(n), np.int64 if kind == CLASSIFICATION else np.float32)
        return Split(texts, targets)

    return Task("tiny", kind, ("negative", "positive") if kind == CLASSIFICATION else (), split(range(4), range(4)),
                split([4], [4]), split([5], [5]))


def test_fit_probe_end_to_end_on_a_tiny_model(bert_dir):
    result = fit_probe(_task(), bert_dir, max_length=16)
    assert result["rows"] == {"train": 8, "validation": 2, "test": 2} and result["features"] == 32
    assert result["c"] in C_GRID and len(result["grid"]) == len(C_GRID)
    picked = next(g for g in result["grid"] if g["c"] == result["c"])
    assert picked["validation_accuracy"] == result["validation_accuracy"] == max(g["validation_accuracy"] for g in result["grid"])
    assert result["test_accuracy"] in (0.0, 0.5, 1.0)  # two test rows
    with pytest.raises(InputError, match="regression"):
        fit_probe(_task(REGRESSION), bert_dir)
