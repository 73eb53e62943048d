"""The architectures table (formats.architectures): its values, its one-line refusals naming the supported types,
and that the builder, the exporter and the runtime read it (a changed row changes what they do) and agree with what
transformers and PEFT really build for tiny llama / gpt2 / bert configs."""

import json
from types import SimpleNamespace

import onnx
import pytest

from edge_lorax.formats import architectures as arch
from edge_lorax.formats.errors import InputError
from helpers import tiny_config

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OFFSET_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "mpnet", "longformer", "ibert")


def _config_dir(tmp_path, name: str, config: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# ------------------------------------------------------------------------------------------------ the values

@pytest.mark.parametrize("model_type, targets, head", [
    ("bert", ("query", "value"), "classifier"), ("gpt2", ("c_attn",), "score"), ("llama", ("q_proj", "v_proj"), "score"),
    ("mistral", ("q_proj", "v_proj"), "score"), ("qwen2", ("q_proj", "v_proj"), "score"),
    ("qwen3", ("q_proj", "v_proj"), "score"), ("gemma3_text", ("q_proj", "v_proj"), "score"), ("phi3", ("qkv_proj",), "score"),
])
def test_default_targets_and_heads(model_type, targets, head):
    row = arch.get_architecture(model_type)
    assert (row.default_targets, row.head) == (targets, head)
    assert arch.get_default_targets(model_type) == targets
    assert arch.head_modules(model_type)[0] == head


KV_TYPES = ("llama", "qwen2", "qwen3", "gemma3_text", "phi3")


def test_the_kv_cache_types_and_their_patterns_map_their_projections():
    assert arch.kv_cache_types() == KV_TYPES
    assert [t for t in arch.supported_types() if arch.supports_kv_cache(t)] == list(KV_TYPES)
    assert not arch.supports_kv_cache("gpt2") and not arch.supports_kv_cache(None) and not arch.supports_kv_cache("mistral")
    assert [arch.get_architecture(t).genai_type for t in KV_TYPES] == list(KV_TYPES)  # the builder's model.type
    for genai_type in ("llama", "qwen2", "qwen3", "gemma3_text"):
        pattern = arch.decoder_pattern(genai_type)
        assert pattern.match("model.layers.3.self_attn.q_proj").groups() == ("3", "self_attn", "q")
        assert pattern.match("model.layers.0.mlp.gate_proj").groups() == ("0", "mlp", "gate")
        for name in ("model.layers.3.self_attn.qkv_proj", "transformer.h.0.attn.c_attn", "model.layers.3.self_attn.q_proj.x"):
            assert pattern.match(name) is None, name
    phi3 = arch.decoder_pattern("phi3")
    assert phi3.match("model.layers.1.self_attn.qkv_proj").groups() == ("1", "self_attn", "qkv")
    assert phi3.match("model.layers.0.mlp.gate_up_proj").groups() == ("0", "mlp", "gate_up")
    assert phi3.match("model.layers.0.self_attn.q_proj") is None and phi3.match("model.layers.0.mlp.up_proj") is None
    assert [t for t in arch.supported_types() if arch.get_architecture(t).scaled_embeddings] == ["gemma3_text"]


def test_position_offset_fusion_and_causal_lm_suffixes():
    assert [t for t in arch.supported_types() if arch.has_position_offset(t)] == list(OFFSET_TYPES)
    assert not arch.has_position_offset("bert") and not arch.has_position_offset("unknown")
    assert arch.fusion_type("bert") == "bert" and arch.fusion_type(None) == "bert" == arch.ENCODER_FUSION
    assert arch.CAUSAL_LM_SUFFIXES == ("ForCausalLM", "LMHeadModel")
    assert arch.is_causal_lm(["LlamaForCausalLM"]) and arch.is_causal_lm(["GPT2LMHeadModel"])
    assert not arch.is_causal_lm(["BertModel", "GPT2ForSequenceClassification"])
    assert not arch.is_causal_lm("LlamaForCausalLM") and not arch.is_causal_lm(None)  # not a list: not a causal LM


def test_rows_are_frozen():
    with pytest.raises(AttributeError):
        arch.get_architecture("llama").genai_type = None


# ---------------------------------------------------------------------------------------------- the refusals

def test_an_unknown_type_is_refused_in_one_line_naming_the_file_and_the_supported_types():
    with pytest.raises(InputError) as e:
        arch.get_architecture("t5", "m/config.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("m/config.json: model_type 't5'")
    assert "bert, gpt2, llama, mistral, qwen2, qwen3, gemma3_text, phi3, roberta" in msg


def test_a_type_without_defaults_or_decoder_is_refused_naming_those_that_have_them():
    with pytest.raises(InputError, match=r"'roberta' has no default target modules.*\(supported: bert, gpt2, llama, "
                                         r"mistral, qwen2, qwen3, gemma3_text, phi3\); pass --targets"):
        arch.get_default_targets("roberta", "m/config.json")
    with pytest.raises(InputError, match=r"genai_config.json: model_type 'gpt2' .*\(supported: llama, qwen2, qwen3, "
                                         r"gemma3_text, phi3\)"):
        arch.decoder_pattern("gpt2", "genai_config.json")


def test_generate_refusal_names_the_kv_cache_types():
    with pytest.raises(InputError) as e:
        arch.refuse_generate("out/b", "causal-lm", "gpt2")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("out/b: a causal-lm bundle of model_type 'gpt2', not a decoder")
    assert "model_type llama or qwen2 or qwen3 or gemma3_text or phi3 (" in msg and "edge-lorax run" in msg
    assert msg.endswith(arch.generate_fix())


# ------------------------------------------------------------------------------------------------ the readers

@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_builder_default_targets_of_a_tiny_config_folder(tmp_path, kind):
    from edge_lorax.builder.models import default_targets

    tiny_config(kind).save_pretrained(tmp_path)
    assert default_targets(tmp_path) == arch.get_architecture(kind).default_targets


def test_builder_refuses_an_unknown_type_naming_config_json_and_the_supported_types(tmp_path):
    from edge_lorax.builder.models import default_targets

    folder = _config_dir(tmp_path, "m", {"model_type": "t5"})
    with pytest.raises(InputError, match=r"m/config.json: model_type 't5' has no default target modules.*supported: "
                                         r"bert, gpt2, llama, mistral, qwen2, qwen3, gemma3_text, phi3\)"):
        default_targets(folder)


def test_builder_and_exporter_read_the_row_not_a_copy(tmp_path, monkeypatch):
    from edge_lorax.builder.models import default_targets
    from edge_lorax.export import llm_bundle

    folder = _config_dir(tmp_path, "m", {"model_type": "gpt2"})
    gpt2 = arch.ARCHITECTURES["gpt2"]
    monkeypatch.setitem(arch.ARCHITECTURES, "gpt2", arch.Architecture("gpt2", ("c_attn", "c_fc"), genai_type="gpt2"))
    assert default_targets(folder) == ("c_attn", "c_fc")
    assert llm_bundle.is_llm({"model_type": "gpt2"})
    monkeypatch.setitem(arch.ARCHITECTURES, "gpt2", gpt2)
    assert not llm_bundle.is_llm({"model_type": "gpt2"})


@pytest.mark.parametrize("archs, task", [(["LlamaForCausalLM"], "causal-lm"), (["GPT2LMHeadModel"], "causal-lm"),
                                         (["BertModel"], "features"), ("LlamaForCausalLM", "features")])
def test_builder_and_exporter_agree_on_causal_lms(tmp_path, archs, task):
    from edge_lorax.builder.models import CAUSAL_LM, SEQ_CLS, task_type
    from edge_lorax.export.bundle import _default_task

    folder = _config_dir(tmp_path, "m", {"model_type": "llama", "architectures": archs})
    assert _default_task(folder, None) == task
    assert task_type(folder) == (CAUSAL_LM if task == "causal-lm" else SEQ_CLS)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "gemma3_text", "phi3", "gemma3", "gpt2", "bert",
                                        "mistral", "roberta", None])
def test_llm_bundle_is_llm_follows_the_table(model_type):
    from edge_lorax.export.llm_bundle import is_llm

    assert is_llm({"model_type": model_type}) == (model_type in KV_TYPES) == arch.supports_kv_cache(model_type)


def test_decoder_export_maps_with_the_row_of_genai_config_type():
    from edge_lorax.export import decoder

    with pytest.raises(InputError, match=r"genai_config.json: model_type 'gpt2' .*\(supported: llama, qwen2, qwen3, "
                                         r"gemma3_text, phi3\)"):
        decoder.find_slots(onnx.ModelProto(), None, {"model": {"type": "gpt2"}})


@pytest.mark.parametrize("config, limit", [
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "bert", "max_position_embeddings": 512, "pad_token_id": 0}, 512),
    ({"model_type": "gpt2", "n_positions": 64}, 64),
])
def test_runtime_positions_follow_the_offset_rule(config, limit):
    from edge_lorax.runtime.infer import max_positions

    assert max_positions(SimpleNamespace(model_config=config)) == limit


def test_fuse_asks_onnxruntime_for_the_table_fusion_type(monkeypatch):
    from onnxruntime.transformers import optimizer

    from edge_lorax.export import fuse

    seen = []
    monkeypatch.setattr(optimizer, "optimize_model", lambda model, model_type, **kw: seen.append(model_type) or
                        SimpleNamespace(model=model))
    monkeypatch.setattr(arch, "ENCODER_FUSION", "bert-test")
    fuse._ort_fusions(onnx.ModelProto(), 2, 32)
    fuse._ort_fusions(onnx.ModelProto(), 2, 32, "bert")
    assert seen == ["bert-test", "bert"]


# ------------------------------------------------------- what transformers and PEFT build agrees with the table

def _tiny(kind: str, head: bool):
    """A tiny random model of `kind`: *ForSequenceClassification (head) or the causal LM / bare encoder."""
    import transformers

    config = tiny_config(kind) if kind in ("bert", "gpt2", "llama") else getattr(
        transformers, {"mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
                       "gemma3_text": "Gemma3TextConfig", "phi3": "Phi3Config"}[kind])(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, head_dim=8, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    cls = "AutoModelForSequenceClassification" if head else ("AutoModel" if kind == "bert" else "AutoModelForCausalLM")
    return getattr(transformers, cls).from_config(config).eval()


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3"])
def test_head_module_and_all_linear_match_what_transformers_and_peft_build(kind):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from edge_lorax.builder.models import head_module

    model = _tiny(kind, head=True)
    assert head_module(model) == arch.get_architecture(kind).head
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="SEQ_CLS"))
    leaves = {name.rsplit(".", 1)[-1] for name, m in peft.named_modules() if isinstance(m, LoraLayer)}
    assert leaves == set(arch.get_architecture(kind).all_linear)
