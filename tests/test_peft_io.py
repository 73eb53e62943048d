"""peft_io against real PEFT output: ΔW as PEFT merges it, the scaling rule, patterns, dtypes and refused inputs."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from edge_lorax.formats.peft import (
    AdapterError,
    delta_weight,
    lora_scaling,
    pattern_value,
    read_adapter,
    read_factors,
    write_adapter,
)
from helpers import corrupt_copy

BERT_Q0 = "bert.encoder.layer.0.attention.self.query"
BERT_V1 = "bert.encoder.layer.1.attention.self.value"
GPT_ATTN0 = "transformer.h.0.attn.c_attn"
GPT_FC1 = "transformer.h.1.mlp.c_fc"

# (arch, LoraConfig overrides, {module: (expected r, expected scaling)})
CASES = {
    "bert-plain": ("bert", {"r": 4, "lora_alpha": 8}, {BERT_Q0: (4, 2.0), BERT_V1: (4, 2.0)}),
    "bert-rslora": ("bert", {"r": 2, "lora_alpha": 16, "use_rslora": True},
                    {BERT_Q0: (2, 16 / math.sqrt(2)), BERT_V1: (2, 16 / math.sqrt(2))}),
    "bert-patterns": ("bert", {"r": 4, "lora_alpha": 8, "rank_pattern": {"layer.1.attention.self.value": 6},
                               "alpha_pattern": {"query": 3}}, {BERT_Q0: (4, 0.75), BERT_V1: (6, 8 / 6)}),
    "gpt2-plain": ("gpt2", {"r": 4, "lora_alpha": 8}, {GPT_ATTN0: (4, 2.0), GPT_FC1: (4, 2.0)}),
    "gpt2-rslora-patterns": ("gpt2", {"r": 3, "lora_alpha": 6, "use_rslora": True, "rank_pattern": {"h.0.attn.c_attn": 5},
                                      "alpha_pattern": {"c_fc": 2}},
                             {GPT_ATTN0: (5, 6 / math.sqrt(5)), GPT_FC1: (3, 2 / math.sqrt(3))}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_delta_weight_equals_peft_merged_weights(case, save_adapter, tiny_model):
    from peft import PeftModel

    arch, overrides, expected = CASES[case]
    path = save_adapter(arch, **overrides)
    info = read_adapter(path)
    for module, (r, scaling) in expected.items():
        assert info.ranks[module] == r
        assert info.scalings[module] == pytest.approx(scaling, rel=1e-12)
    assert info.fan_in_fan_out is (arch == "gpt2")
    base = tiny_model(arch)
    before = {m: base.get_submodule(m).weight.detach().clone() for m in info.modules}
    merged = PeftModel.from_pretrained(base, path).merge_and_unload()
    for module in info.modules:
        peft_dw = (merged.get_submodule(module).weight.detach() - before[module]).double().numpy()
        peft_dw = peft_dw.T if arch == "gpt2" else peft_dw  # Conv1D stores (in, out)
        ours = delta_weight(info, module)
        assert ours.shape == info.shapes[module]
        assert np.abs(ours).max() > 1e-2  # a real, non-zero ΔW
        assert np.abs(ours - peft_dw).max() <= 1e-6, module


def test_factors_fold_sqrt_scaling_into_both_sides(save_adapter):
    path = save_adapter("bert", r=2, lora_alpha=16, use_rslora=True)
    info = read_adapter(path)
    raw = load_file(str(path / "adapter_model.safetensors"))
    A, B = read_factors(info, BERT_Q0)
    root = math.sqrt(16 / math.sqrt(2))
    np.testing.assert_allclose(A, raw[f"base_model.model.{BERT_Q0}.lora_A.weight"] * root, rtol=1e-6)
    np.testing.assert_allclose(B, raw[f"base_model.model.{BERT_Q0}.lora_B.weight"] * root, rtol=1e-6)
    assert A.dtype == np.float64 and B.dtype == np.float64


def test_scaling_rule_and_pattern_lookup():
    assert lora_scaling(16, 4) == 4.0
    assert lora_scaling(16, 4, use_rslora=True) == 8.0
    patterns = {"layer.1.attention.self.value": 6, "^bert.encoder.layer.0.attention.self.query": 2}
    assert pattern_value(patterns, BERT_V1, 4) == 6
    assert pattern_value(patterns, BERT_Q0, 4) == 2
    assert pattern_value(patterns, "bert.encoder.layer.0.attention.self.value", 4) == 4  # only a dotted suffix matches
    assert pattern_value(patterns, "x.layer.11.attention.self.value", 4) == 4
    assert pattern_value(None, BERT_Q0, 7) == 7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_adapters_read_exactly(dtype, save_adapter, tmp_path):
    from safetensors.torch import load_file as load_pt
    from safetensors.torch import save_file as save_pt

    src = save_adapter("bert")
    shutil.copytree(src, tmp_path / "half")
    tensors = {k: v.to(dtype) for k, v in load_pt(str(src / "adapter_model.safetensors")).items()}
    save_pt(tensors, str(tmp_path / "half" / "adapter_model.safetensors"))
    info = read_adapter(tmp_path / "half")
    A, B = read_factors(info, BERT_Q0)
    key = f"base_model.model.{BERT_Q0}.lora_A.weight"
    np.testing.assert_array_equal(A, tensors[key].double().numpy() * math.sqrt(info.scalings[BERT_Q0]))
    assert np.abs(delta_weight(info, BERT_Q0) - delta_weight(read_adapter(src), BERT_Q0)).max() < 0.05


def test_write_adapter_round_trips_through_peft(tmp_path, tiny_model):
    """Heterogeneous ranks become an anchored rank/alpha pattern PEFT applies to exactly that module."""
    from peft import PeftModel

    rng = np.random.default_rng(0)
    factors = {BERT_Q0: (rng.standard_normal((3, 32)), rng.standard_normal((32, 3))),
               BERT_V1: (rng.standard_normal((5, 32)), rng.standard_normal((32, 5))),
               "bert.encoder.layer.1.attention.self.query": (rng.standard_normal((3, 32)), rng.standard_normal((32, 3)))}
    path = write_adapter(tmp_path / "w", factors, "edge-lorax/tiny-random-bert")
    info = read_adapter(path)
    assert info.ranks == {m: a.shape[0] for m, (a, _) in sorted(factors.items())}
    base = tiny_model("bert")
    before = {m: base.get_submodule(m).weight.detach().clone() for m in factors}
    merged = PeftModel.from_pretrained(base, path).merge_and_unload()
    for m, (a, b) in factors.items():
        assert info.scalings[m] == 1.0
        np.testing.assert_allclose((merged.get_submodule(m).weight.detach() - before[m]).double().numpy(), b @ a, atol=1e-5)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_adapter(path, factors, "x")


# ---- refused inputs (the CLI's exit codes and leftovers are in test_cli_core.py) ----

def test_dora_refused(save_adapter):
    path = save_adapter("bert", use_dora=True)
    with pytest.raises(AdapterError, match=r"DoRA adapter \(use_dora=true\)"):
        read_adapter(path)


@pytest.mark.parametrize("kind", ["VERA", "IA3"])
def test_non_lora_peft_types_refused(kind, save_adapter):
    from peft import IA3Config, VeraConfig

    config = VeraConfig(r=4, target_modules=["query", "value"]) if kind == "VERA" else \
        IA3Config(target_modules=["query", "value"], feedforward_modules=[])
    path = save_adapter("bert", peft_config=config)
    with pytest.raises(AdapterError, match=f"peft_type {kind} is not LORA"):
        read_adapter(path)


def test_pickled_bin_refused_with_conversion(save_adapter):
    path = save_adapter("bert", safe=False)
    assert (path / "adapter_model.bin").is_file() and not (path / "adapter_model.safetensors").exists()
    with pytest.raises(AdapterError, match=r"pickled weights are never loaded; convert with .*safe_serialization=True"):
        read_adapter(path)


def test_missing_files_refused(save_adapter, tmp_path):
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        read_adapter(tmp_path)
    shutil.copy(save_adapter("bert") / "adapter_config.json", tmp_path)
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        read_adapter(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_refused(bad, save_adapter, tmp_path):
    path = corrupt_copy(save_adapter("bert"), tmp_path / "bad", f"{BERT_V1}.lora_B.weight", bad)
    info = read_adapter(path)  # header-only read does not look at values
    read_factors(info, BERT_Q0)
    with pytest.raises(AdapterError, match=f"NaN or Inf in {BERT_V1}"):
        read_factors(info, BERT_V1)


def test_inconsistent_lora_shapes_refused(save_adapter, tmp_path):
    path = shutil.copytree(save_adapter("bert"), tmp_path / "bad")
    tensors = load_file(str(path / "adapter_model.safetensors"))
    key = f"base_model.model.{BERT_Q0}.lora_B.weight"
    tensors[key] = np.ascontiguousarray(tensors[key][:, :2])
    save_file(tensors, str(path / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=f"module {BERT_Q0} has lora shapes"):
        read_adapter(path)


def test_adapter_without_lora_tensors_refused(save_adapter, tmp_path):
    path = shutil.copytree(save_adapter("bert"), tmp_path / "empty")
    save_file({"something.else": np.zeros(2, np.float32)}, str(path / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="no lora_A/lora_B weights"):
        read_adapter(path)


def test_config_is_read_not_guessed(save_adapter):
    path = save_adapter("bert", r=2, lora_alpha=16, use_rslora=True)
    cfg = json.loads((path / "adapter_config.json").read_text())
    info = read_adapter(path)
    assert cfg["use_rslora"] is True and info.base_model == "edge-lorax/tiny-random-bert"
    assert len(info.sha256) == 64 and info.modules == tuple(sorted(info.modules))
