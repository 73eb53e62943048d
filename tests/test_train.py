"""Coefficient training on the real MiniLM: only coefficients + head learn, loss falls, users round-trip exactly."""


import numpy as np
import pytest
import torch

from edge_lorax.builder.data import Split, Task
from edge_lorax.builder.loop import TrainConfig, encode, evaluate, fit, predict
from edge_lorax.builder.models import DEFAULT_MODEL_ID, default_model_path, load_model, load_tokenizer
from edge_lorax.builder.subspace import build_subspace
from edge_lorax.builder.train import apply_user, coeff_model, train_coeffs
from edge_lorax.formats.user import read_user

pytestmark = pytest.mark.slow  # the real all-MiniLM-L6-v2

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _lora_dirs(tmp_path_factory, n=3):
    """Real PEFT LoRA adapters (r=8, q/v) on the real MiniLM, random non-zero factors, portable base id."""
    from peft import LoraConfig, get_peft_model

    from edge_lorax.builder.baselines import portable_config

    root, dirs = tmp_path_factory.mktemp("adapters"), []
    for i in range(n):
        torch.manual_seed(i)
        net = get_peft_model(load_model(default_model_path(), 2),
                             LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False))
        net.save_pretrained(root / f"a{i}")
        portable_config(root / f"a{i}", DEFAULT_MODEL_ID, "classifier")
        dirs.append(root / f"a{i}")
    return dirs


@pytest.fixture(scope="module")
def subspace(tmp_path_factory):
    return build_subspace(_lora_dirs(tmp_path_factory), components=8)


@pytest.fixture(scope="module")
def task():
    """A few hundred real VADER tweets; the first 320 train, then 80 validation, 80 test."""
    from edge_lorax.builder.data import load_task

    full = load_task("vader:tweets-binary", seed=0)
    cut = lambda s, a, b: Split(s.texts[a:b], s.targets[a:b])  # noqa: E731
    return Task("tweets-small", full.kind, full.labels, cut(full.train, 0, 320), cut(full.validation, 0, 80),
                cut(full.test, 0, 80))


CONFIG = TrainConfig(lr=5e-3, batch_size=16, max_length=32, steps=30, eval_every=0, warmup=0.0)


def test_only_coefficients_and_head_train(subspace, task):
    net = coeff_model(None, subspace, 2, init="uniform", seed=0)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("coeff_A", "coeff_B")) or n.startswith("classifier.") for n in trainable)
    frozen = {n: t.clone() for n, t in net.state_dict().items() if n not in trainable}
    fit(net, task, load_tokenizer(default_model_path()), CONFIG, progress=False)
    after = net.state_dict()
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)  # base weights and components bit-identical
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in net.named_parameters() if n.endswith("coeff_B"))


def test_zero_b_is_exactly_the_base_model_at_step_0(subspace):
    tok = load_tokenizer(default_model_path())
    batch = tok(["a fine day", "the worst film I have ever seen"], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    net = coeff_model(None, subspace, 2, init="zero_b", seed=0)
    base = load_model(default_model_path(), 2)
    base.classifier.load_state_dict(net.classifier.state_dict())
    with torch.no_grad():
        assert torch.equal(net(**batch).logits, base(**batch).logits)


def test_training_lowers_val_loss_beats_untrained_and_reloads_identically(subspace, task, tmp_path):
    tok = load_tokenizer(default_model_path())
    val = encode(task.validation, task.kind, tok, CONFIG.max_length)
    torch.manual_seed(0)
    untrained = evaluate(coeff_model(None, subspace, 2, init="zero_b", seed=0), val)["loss"]
    report = train_coeffs(subspace, task, tmp_path / "user.npz", config=CONFIG, progress=False)
    assert report.result.validation["loss"] < untrained - 0.02
    assert report.coeff_params == 12 * 2 * 8 * 8 and report.head_params == 384 * 2 + 2
    user = read_user(tmp_path / "user.npz")
    assert user.fingerprint == subspace.fingerprint and user.meta["task"] == "tweets-small"
    net = apply_user(coeff_model(None, subspace, 2, init="uniform", seed=123), user)
    reloaded = predict(net, val)
    again = apply_user(coeff_model(None, subspace, 2, init="zero_b", seed=7), user)
    np.testing.assert_array_equal(reloaded, predict(again, val))
    assert evaluate(net, val)["loss"] == pytest.approx(report.result.validation["loss"], abs=1e-5)


def test_training_on_another_base_model_is_refused(subspace, tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="built for 'sentence-transformers/all-MiniLM-L6-v2'"):
        coeff_model(str(tmp_path / "other"), subspace, 2)


def test_train_cli_refuses_subspace_mismatch_and_leaves_nothing(subspace, tmp_path):
    from click.testing import CliRunner

    from edge_lorax.cli import cli
    from edge_lorax.formats.subspace import write_subspace

    write_subspace(subspace, tmp_path / "sub")
    result = CliRunner().invoke(cli, ["train", "--subspace", str(tmp_path / "sub"), "--data", str(tmp_path / "missing.csv"),
                                      "-o", str(tmp_path / "u.npz")])
    assert result.exit_code != 0 and "missing.csv" in result.output
    assert not (tmp_path / "u.npz").exists()
