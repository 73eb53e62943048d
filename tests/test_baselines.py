"""Baselines and the shared harness: LoRA / VeRA / head-only training, the written PEFT folder, metrics, the CLI.

Most tests use a tiny random BERT (real MiniLM tokenizer, 2 layers, hidden 32) saved as a local model folder; one
test trains the real embedded MiniLM for a few dozen steps on a few hundred VADER tweets.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_lorax.builder.baselines import baseline_model, train_lora  # noqa: E402
from edge_lorax.builder.data import Split, Task, load_task  # noqa: E402
from edge_lorax.builder.loop import (  # noqa: E402
    TrainConfig,
    encode,
    evaluate,
    fit,
    macro_f1,
    metrics,
    predict,
    schedule,
    total_steps,
)
from edge_lorax.builder.models import DEFAULT_MODEL_ID, default_model_path, load_model, load_tokenizer  # noqa: E402
from edge_lorax.cli import cli  # noqa: E402


def subset(task: Task, n_train: int, n_eval: int) -> Task:
    """The first rows of each split (the split is already shuffled)."""
    def cut(split, n):
        return Split(split.texts[:n], split.targets[:n])
    return Task(task.name, task.kind, task.labels, cut(task.train, n_train), cut(task.validation, n_eval), cut(task.test, n_eval))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A local model folder: random 2-layer BERT encoder (hidden 32, no head, like the MiniLM) + the MiniLM tokenizer."""
    import transformers
    from transformers import BertConfig, BertModel

    transformers.logging.set_verbosity_error()
    folder = tmp_path_factory.mktemp("models") / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    load_tokenizer(default_model_path()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tweets():
    return subset(load_task("vader:tweets-binary"), 320, 96)


@pytest.fixture(scope="module")
def tweets_reg():
    return subset(load_task("vader:tweets-regression"), 320, 96)


FAST = TrainConfig(lr=5e-3, batch_size=16, max_length=32, steps=40, eval_every=20, warmup=0.0)


# --------------------------------------------------------------------------------------------- the harness

def test_metrics_by_hand():
    logits = np.array([[2, 0], [0, 1], [3, 1], [0, 2]], np.float32)
    targets = np.array([0, 1, 1, 1])
    got = metrics(logits, targets, "classification")
    assert got["accuracy"] == 0.75
    assert got["macro_f1"] == pytest.approx(np.mean([2 / 3, 0.8]))  # class 0: P 1/2 R 1; class 1: P 1 R 2/3
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(targets)).item())
    reg = metrics(np.array([[1.0], [2.0], [3.0]], np.float32), np.array([1.0, 2.0, 4.0], np.float32), "regression")
    assert reg["mse"] == pytest.approx(1 / 3) and reg["mae"] == pytest.approx(1 / 3)
    assert reg["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [1, 2, 4])[0, 1])
    assert macro_f1(np.array([0, 0]), np.array([0, 0]), 3) == 1.0  # absent classes are not averaged


def test_steps_and_schedule():
    assert total_steps(100, TrainConfig(batch_size=32, epochs=1.0)) == 4
    assert total_steps(100, TrainConfig(batch_size=32, epochs=2.5, steps=7)) == 7
    factor = schedule(100, 0.1)
    assert [round(factor(s), 3) for s in (0, 9, 10, 55, 99, 100)] == [0.1, 1.0, 1.0, 0.5, 0.011, 0.0]


def test_predict_ignores_padding_and_row_order(tiny_dir, tweets):
    net, tok = load_model(tiny_dir, 2), load_tokenizer(tiny_dir)
    data = encode(tweets.validation, "classification", tok, 32)
    batched = predict(net, data, batch_size=7)
    one_by_one = np.concatenate([predict(net, encode(Split((t,), y[None]), "classification", tok, 32))
                                 for t, y in zip(tweets.validation.texts[:10], tweets.validation.targets[:10])])
    np.testing.assert_allclose(batched[:10], one_by_one, atol=1e-5)


def test_fit_trains_only_what_requires_grad_and_lowers_val_loss(tiny_dir, tweets):
    net, tok = baseline_model(tiny_dir, 2, "head", seed=0), load_tokenizer(tiny_dir)
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    before = evaluate(net, encode(tweets.validation, "classification", tok, 32))
    result = fit(net, tweets, tok, FAST, progress=False)
    assert result.params == 32 * 2 + 2 and result.steps == 40 and len(result.history) == 2
    assert result.validation["loss"] < before["loss"] - 0.01
    assert all(torch.equal(p, frozen[n]) for n, p in net.named_parameters() if n in frozen)
    assert result.s_per_step > 0 and 0 <= result.test["accuracy"] <= 1


def test_fit_refuses_a_model_with_nothing_to_train(tiny_dir, tweets):
    net = load_model(tiny_dir, 2)
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        fit(net, tweets, load_tokenizer(tiny_dir), FAST, progress=False)


def test_early_stopping_restores_the_best_validation_weights(tiny_dir, tweets):
    net, tok = baseline_model(tiny_dir, 2, "lora", seed=0), load_tokenizer(tiny_dir)
    config = TrainConfig(lr=0.3, batch_size=16, max_length=32, steps=60, eval_every=5, patience=2, warmup=0.0)
    result = fit(net, tweets, tok, config, progress=False)  # lr 0.3 diverges: validation loss rises, stops early
    losses = {step: loss for step, _, loss, _ in result.history}
    assert result.steps < 60 and result.best_step == min(losses, key=losses.get)
    assert result.validation["loss"] == pytest.approx(losses[result.best_step], abs=1e-5)


# ------------------------------------------------------------------------------------------- the baselines

def test_train_lora_writes_a_loadable_peft_folder_with_a_portable_id(tiny_dir, tweets, tmp_path):
    from peft import PeftModel

    report = train_lora(tweets, tmp_path / "a", model=str(tiny_dir), rank=4, alpha=8, config=FAST, progress=False)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny-bert" and cfg["r"] == 4 and cfg["modules_to_save"] == ["classifier"]
    assert sorted(cfg["target_modules"]) == ["query", "value"]
    assert report.adapter_params == 2 * 2 * 4 * (32 + 32) and report.head_params == 32 * 2 + 2
    assert report.bytes == (tmp_path / "a" / "adapter_model.safetensors").stat().st_size
    for f in (tmp_path / "a").iterdir():
        assert str(tiny_dir) not in f.read_text(errors="ignore"), f"{f.name} leaks the local base path"
    info = json.loads((tmp_path / "a" / "training.json").read_text())
    assert info["test"]["accuracy"] == pytest.approx(report.result.test["accuracy"], abs=1e-6) and info["labels"] == ["negative", "positive"]
    loaded = PeftModel.from_pretrained(load_model(tiny_dir, 2), tmp_path / "a").eval()
    data = encode(tweets.test, "classification", load_tokenizer(tiny_dir), 32)
    assert evaluate(loaded, data)["accuracy"] == pytest.approx(report.result.test["accuracy"])
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        train_lora(tweets, tmp_path / "a", model=str(tiny_dir), config=FAST, progress=False)


def test_same_seed_same_weights_other_seed_other_weights(tiny_dir, tweets, tmp_path):
    short = TrainConfig(lr=5e-3, batch_size=16, max_length=32, steps=5, eval_every=0)
    for name, seed in (("x", 0), ("y", 0), ("z", 1)):
        train_lora(tweets, tmp_path / name, model=str(tiny_dir), rank=2, config=TrainConfig(**{**short.__dict__, "seed": seed}),
                   progress=False)
    weights = {n: (tmp_path / n / "adapter_model.safetensors").read_bytes() for n in "xyz"}
    assert weights["x"] == weights["y"] and weights["x"] != weights["z"]


def test_vera_trains_its_vectors_and_reloads(tiny_dir, tweets, tmp_path):
    from peft import PeftModel

    config = TrainConfig(lr=2e-2, batch_size=16, max_length=32, steps=40, eval_every=0, warmup=0.0)
    net, tok = baseline_model(tiny_dir, 2, "vera", rank=16, seed=0), load_tokenizer(tiny_dir)
    before = evaluate(net, encode(tweets.validation, "classification", tok, 32))
    assert fit(net, tweets, tok, config, progress=False).validation["loss"] < before["loss"] - 0.01
    report = train_lora(tweets, tmp_path / "v", model=str(tiny_dir), method="vera", rank=16, config=config, progress=False)
    assert report.adapter_params == 2 * 2 * (16 + 32)  # lambda_d (r) + lambda_b (out) per adapted layer
    cfg = json.loads((tmp_path / "v" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "VERA" and cfg["base_model_name_or_path"] == "tiny-bert"
    loaded = PeftModel.from_pretrained(load_model(tiny_dir, 2), tmp_path / "v").eval()
    lambda_b = [p for n, p in loaded.named_parameters() if "vera_lambda_b" in n]
    assert len(lambda_b) == 4 and all(not torch.allclose(p, torch.ones_like(p)) for p in lambda_b)  # init is ones
    data = encode(tweets.test, "classification", tok, 32)
    assert evaluate(loaded, data)["loss"] == pytest.approx(report.result.test["loss"], abs=1e-5)


def test_head_only_saves_the_head_and_regression_works(tiny_dir, tweets_reg, tmp_path):
    from safetensors.torch import load_file

    report = train_lora(tweets_reg, tmp_path / "h", model=str(tiny_dir), method="head", config=FAST, progress=False)
    assert (report.adapter_params, report.head_params) == (0, 32 + 1)
    tensors = load_file(tmp_path / "h" / "head.safetensors")
    assert sorted(tensors) == ["classifier.bias", "classifier.weight"] and tensors["classifier.weight"].shape == (1, 32)
    net = load_model(tiny_dir, 1)
    net.classifier.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items()})
    data = encode(tweets_reg.test, "regression", load_tokenizer(tiny_dir), 32)
    assert evaluate(net, data)["mse"] == pytest.approx(report.result.test["mse"], rel=1e-5)
    assert set(report.result.test) == {"loss", "mse", "mae", "pearson"}
    assert "pearson" in report.summary() and "MSE" in report.summary()


@pytest.mark.slow
def test_real_minilm_lora_learns_and_reloads(tweets, tmp_path):
    """The embedded model: 20 steps on 320 tweets beat the untrained model; the folder reloads to the same logits."""
    from peft import PeftModel

    torch.set_num_threads(2)
    task = subset(tweets, 320, 64)
    config = TrainConfig(lr=2e-3, batch_size=16, max_length=32, steps=20, eval_every=0)
    path = default_model_path()
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    untrained = evaluate(load_model(path, 2), encode(task.validation, "classification", tok, 32))
    report = train_lora(task, tmp_path / "m", config=config, progress=False)
    assert report.result.validation["loss"] < untrained["loss"] - 0.05
    assert (report.adapter_params, report.head_params) == (73_728, 770) and report.bytes == 301_520
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == DEFAULT_MODEL_ID
    loaded = PeftModel.from_pretrained(load_model(path, 2), tmp_path / "m").eval()
    data = encode(task.validation, "classification", tok, 32)
    assert evaluate(loaded, data)["loss"] == pytest.approx(report.result.validation["loss"], abs=1e-5)


# ----------------------------------------------------------------------------------------------------- CLI

def test_cli_train_lora(tiny_dir, tmp_path):
    rows = load_task("vader:amazon-binary").train
    csv_path = tmp_path / "reviews.csv"
    with open(csv_path, "w") as f:
        f.write("review,stars\n" + "".join(f'"{t.replace(chr(34), "")}",{"good" if y else "bad"}\n'
                                          for t, y in zip(rows.texts[:200], rows.targets[:200])))
    args = ["train-lora", "--data", str(csv_path), "--text-column", "review", "--label-column", "stars", "--model",
            str(tiny_dir), "-o", str(tmp_path / "out"), "--steps", "4", "--batch-size", "8", "--rank", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]  # the progress bar is on stderr
    assert last.startswith("reviews lora: test accuracy") and "trainable 512 adapter + 66 head" in last and "s/step x 4" in last
    assert json.loads((tmp_path / "out" / "training.json").read_text())["labels"] == ["bad", "good"]
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "already exists; pass --overwrite" in again.output
    shutil.rmtree(tmp_path / "out")
    wrong = CliRunner().invoke(cli, args[:-8] + ["--method", "vera", "--model", str(tmp_path), "-o", str(tmp_path / "o2")])
    assert wrong.exit_code == 1 and "not a local Hugging Face model folder" in wrong.output


# ------------------------------------------------------------------------------------- committed source family

ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"


def test_committed_source_family_is_complete_and_portable():
    from edge_lorax.builder.data import VADER_TASKS

    for spec in VADER_TASKS:
        folder = ADAPTERS / spec.removeprefix("vader:")
        cfg = json.loads((folder / "adapter_config.json").read_text())
        info = json.loads((folder / "training.json").read_text())
        assert cfg["base_model_name_or_path"] == DEFAULT_MODEL_ID and cfg["peft_type"] == "LORA"
        assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"]), cfg["modules_to_save"]) == (8, 16, ["query", "value"], ["classifier"])
        heads = {"binary": 2, "3class": 3, "regression": 1}[spec.rsplit("-", 1)[1]]
        assert (info["task"], info["adapter_params"], info["head_params"]) == (spec, 73_728, 385 * heads)
        assert (folder / "adapter_model.safetensors").stat().st_size == info["bytes"]
        primary = "pearson" if heads == 1 else "accuracy"
        assert info["test"][primary] > 0.65, (spec, info["test"])


@pytest.mark.slow
def test_a_committed_adapter_reproduces_its_test_accuracy():
    from peft import PeftModel

    torch.set_num_threads(2)
    folder, path = ADAPTERS / "nyt-binary", default_model_path()
    info = json.loads((folder / "training.json").read_text())
    net = PeftModel.from_pretrained(load_model(path, 2), folder).eval()
    task = load_task("vader:nyt-binary", seed=info["config"]["seed"])
    scores = evaluate(net, encode(task.test, "classification", load_tokenizer(path), info["config"]["max_length"]))
    assert scores["accuracy"] == pytest.approx(info["test"]["accuracy"], abs=1e-6)
    assert scores["loss"] == pytest.approx(info["test"]["loss"], abs=1e-4)
