"""The injected layer: equal to PEFT's LoRA model on the same ΔW (Linear and Conv1D), per-example users equal
separate runs, merge/unmerge round trips, only coefficients train, wrong models refused."""

import copy

import numpy as np
import pytest
import torch

from edge_lorax.builder.inject import (
    EigenLoraLayer,
    coeff_tensors,
    eigen_layers,
    init_coeffs,
    inject_subspace,
    layer_shape,
    load_coeff_tensors,
    merge_all,
    set_feed,
)
from edge_lorax.builder.project import delta_weights, reconstruct_adapter
from edge_lorax.builder.subspace import build_subspace
from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError  # noqa: E402
from edge_lorax.formats.user import User
from helpers import model_outputs, token_batch


@pytest.fixture(scope="module")
def subspaces(save_adapter):
    """{arch: subspace K=6 from four real PEFT adapters of ranks 2-4}."""
    return {arch: build_subspace([save_adapter(arch, weight_seed=s, r=r) for s, r in [(1, 2), (2, 4), (3, 3), (4, 4)]],
                                 components=6) for arch in ("bert", "gpt2")}


def injected(tiny_model, sub, arch, seed=0):
    model = tiny_model(arch)
    inject_subspace(model, sub)
    init_coeffs(model, "uniform", seed=seed)
    return model


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_injected_model_equals_peft_lora_on_the_same_delta_w(arch, subspaces, tiny_model, tmp_path, monkeypatch):
    from peft import PeftModel

    sub = subspaces[arch]
    model = injected(tiny_model, sub, arch, seed=3)
    coeffs = User(sub.fingerprint, coeff_tensors(model))
    peft = PeftModel.from_pretrained(tiny_model(arch), reconstruct_adapter(sub, coeffs, tmp_path / "rec")).eval()
    ids = token_batch(seed=1)
    monkeypatch.setattr(EigenLoraLayer, "delta_weight", lambda self: pytest.fail("forward materialized ΔW"))
    ours, theirs = model_outputs(model, ids), model_outputs(peft, ids)
    monkeypatch.undo()
    assert (theirs - model_outputs(tiny_model(arch), ids)).abs().max() > 1e-2  # 1000x the tolerance below
    assert (ours - theirs).abs().max() <= 1e-5
    for name, dw in delta_weights(sub, coeffs).items():
        np.testing.assert_allclose(eigen_layers(model)[name].delta_weight().numpy(), dw, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_per_example_coefficients_equal_separate_runs(arch, subspaces, tiny_model):
    sub = subspaces[arch]
    model = injected(tiny_model, sub, arch)
    users = []
    for seed in (10, 11, 12):
        init_coeffs(model, "uniform", seed=seed)
        users.append({k: torch.from_numpy(v) for k, v in coeff_tensors(model).items()})
    feed = {k: torch.stack([u[k] for u in users]) for k in users[0]}  # (B, r, K) and (B, K, r)
    assert feed[names.coeff_name(next(iter(sub.modules)), names.COEFF_A)].shape == (3, 4, 6)
    ids = token_batch(batch=3, seed=2)
    set_feed(model, feed)
    together = model_outputs(model, ids)
    set_feed(model, None)  # separate runs: each user loaded into the layer parameters in turn
    for i, user in enumerate(users):
        load_coeff_tensors(model, user)
        alone = model_outputs(model, ids[i: i + 1])
        assert (together[i: i + 1] - alone).abs().max() <= 1e-5
        set_feed(model, user)  # a feed without a batch dimension is one user for the whole batch
        assert (model_outputs(model, ids)[i] - alone[0]).abs().max() <= 1e-5
        set_feed(model, None)
    same_user = model_outputs(model, ids)  # every example with the last user
    assert (together[0] - same_user[0]).abs().max() > 1e-2  # users really differ


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_merge_unmerge_round_trip(arch, subspaces, tiny_model):
    sub = subspaces[arch]
    model, ids = injected(tiny_model, sub, arch, seed=5), token_batch(seed=3)
    base_weights = {n: layer.base.weight.detach().clone() for n, layer in eigen_layers(model).items()}
    unmerged = model_outputs(model, ids)
    merge_all(model)
    assert all(layer.merged for layer in eigen_layers(model).values())
    assert (model_outputs(model, ids) - unmerged).abs().max() <= 1e-5
    moved = max((layer.base.weight - base_weights[n]).abs().max() for n, layer in eigen_layers(model).items())
    assert moved > 1e-2
    merge_all(model, -1)
    assert not any(layer.merged for layer in eigen_layers(model).values())
    for name, layer in eigen_layers(model).items():
        assert (layer.base.weight - base_weights[name]).abs().max() <= 1e-6
    assert (model_outputs(model, ids) - unmerged).abs().max() <= 1e-5


def test_only_coefficients_are_trainable(subspaces, tiny_model):
    sub = subspaces["bert"]
    model = tiny_model("bert")
    layers = inject_subspace(model, sub, rank=2, k=5)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == {f"{q}.{side}" for q in sub.modules for side in ("coeff_A", "coeff_B")}
    assert sum(p.numel() for p in trainable.values()) == len(sub.modules) * 2 * 5 * 2
    layer = layers["bert.encoder.layer.0.attention.self.query"]
    assert layer.components_A.shape == (5, 32) and layer.coeff_A.shape == (2, 5) and layer.coeff_B.shape == (5, 2)
    assert "components_A" in dict(layer.named_buffers()) and not layer.components_A.requires_grad
    init_coeffs(model, "zero_b")
    ids = token_batch()
    assert (model_outputs(model, ids) - model_outputs(tiny_model("bert"), ids)).abs().max() == 0  # ΔW = 0 at step 0
    with pytest.raises(ValueError, match="init must be 'uniform' or 'zero_b'"):
        init_coeffs(model, "normal")


def test_coefficients_from_a_user_file_set_shapes_and_values(subspaces, tiny_model):
    sub = subspaces["gpt2"]
    source = injected(tiny_model, sub, "gpt2", seed=8)
    tensors = coeff_tensors(source)
    model = tiny_model("gpt2")
    inject_subspace(model, sub, coeffs=tensors)
    ids = token_batch()
    assert (model_outputs(model, ids) - model_outputs(source, ids)).abs().max() == 0
    assert layer_shape(model.get_submodule("transformer.h.0.attn.c_attn").base) == (96, 32)  # Conv1D stores (in, out)


def test_bare_backbone_accepts_task_model_names(subspaces, tiny_model):
    sub = subspaces["bert"]
    task = injected(tiny_model, sub, "bert", seed=4)
    backbone = tiny_model("bert").bert
    inject_subspace(backbone, sub, coeffs=coeff_tensors(task))
    ids = token_batch()
    with torch.no_grad():
        want = task(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        got = backbone(input_ids=ids).last_hidden_state
    assert (want - got).abs().max() <= 1e-6


def test_wrong_model_refused(subspaces, tiny_model):
    with pytest.raises(ValueError, match=r"layer is \(48, 48\), subspace has \(32, 32\); wrong base model"):
        inject_subspace(tiny_model("bert", hidden=48), subspaces["bert"])
    with pytest.raises(InputError, match="not found in GPT2ForSequenceClassification"):
        inject_subspace(tiny_model("gpt2"), subspaces["bert"])


def test_merge_is_exact_enough_over_many_round_trips(subspaces, tiny_model):
    model = injected(tiny_model, subspaces["bert"], "bert", seed=6)
    layer = copy.deepcopy(eigen_layers(model)["bert.encoder.layer.1.attention.self.value"])
    start = layer.base.weight.detach().clone()
    for _ in range(20):
        layer.merge()
        layer.merge(-1)
    assert (layer.base.weight - start).abs().max() <= 1e-5


def test_merging_twice_adds_delta_w_once(subspaces, tiny_model):
    model, ids = injected(tiny_model, subspaces["gpt2"], "gpt2", seed=9), token_batch()
    want = model_outputs(model, ids)
    merge_all(model)
    merge_all(model)
    assert (model_outputs(model, ids) - want).abs().max() <= 1e-5
    merge_all(model, -1)
    merge_all(model, -1)
    assert (model_outputs(model, ids) - want).abs().max() <= 1e-5
    assert not any(layer.merged for layer in eigen_layers(model).values())
