"""`export --fuse` (edge_lorax/export/fuse.py) on the tiny BERT: the fused graph (com.microsoft Attention with the
q/k/v coefficient branches inside, SkipLayerNormalization, BiasGelu) equals the unfused graph and the injected torch
model for different users and padded batches, keeps the coefficient inputs as they are, serves as the runtime's
`fused` variant, handles a key branch and per-example graphs, and refuses (manifest reason, no file) a subspace with
a branch outside q/k/v."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from edge_lorax.builder.inject import inject_subspace  # noqa: E402
from edge_lorax.export import export_bundle  # noqa: E402
from edge_lorax.export.fuse import FuseRefused, find_layers, fuse_attention  # noqa: E402
from edge_lorax.export.graph import mean_pool  # noqa: E402
from edge_lorax.formats import names  # noqa: E402
from edge_lorax.formats.subspace import read_subspace, write_subspace  # noqa: E402
from helpers import ort_session, random_user  # noqa: E402
from helpers.tiny import tiny_setup  # noqa: E402

TOL = 1e-5
FUSED = names.BUNDLE_VARIANT_FILES["fused"]


def tokens(pad: str = "right") -> dict:
    """3 rows of 9 seeded ids; row 1 right-padded, row 2 left-padded (pad="both") or right-padded too."""
    rng = np.random.default_rng(7)
    ids = rng.integers(1, 99, size=(3, 9), dtype=np.int64)
    mask = np.ones((3, 9), np.int64)
    mask[1, 5:] = 0
    if pad == "both":
        mask[2, :4] = 0
    else:
        mask[2, 7:] = 0
    return {names.INPUT_IDS: ids, names.ATTENTION_MASK: mask}


def run(path, feeds=None, toks=None, output: int = 0) -> np.ndarray:
    return ort_session(path).run(None, {**(toks or tokens()), **(feeds or {})})[output]


@torch.no_grad()
def torch_features(setup, user, toks) -> np.ndarray:
    """Mean-pooled features of a fresh model with the user's coefficients injected: no export code."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(setup.model).eval()
    inject_subspace(model, read_subspace(setup.subspace), coeffs=user.coefficients)
    ids, mask = (torch.from_numpy(toks[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK))
    return mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask).numpy()


def adapters_on(model_dir, targets: list, out, n: int = 3) -> list:
    """n random PEFT LoRA adapters on the tiny BERT folder with other target modules than tiny_setup's q, v."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    dirs = []
    for i in range(n):
        torch.manual_seed(200 + i)
        peft = get_peft_model(AutoModel.from_pretrained(model_dir),
                              LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False))
        peft.save_pretrained(out / f"adapter{i}")
        dirs.append(out / f"adapter{i}")
    return dirs


def subspace_on(bert, targets: list, root):
    from edge_lorax.builder.subspace import build_subspace

    return write_subspace(build_subspace(adapters_on(bert.model, targets, root), components=3), root / "subspace")


@pytest.fixture(scope="module")
def users(bert):
    sub = read_subspace(bert.subspace)
    return [random_user(sub, seed, scale=1.0) for seed in (21, 22)]


@pytest.fixture(scope="module")
def features(bert, tmp_path_factory):
    """A features bundle (zero defaults) with model.fused.onnx."""
    return export_bundle(bert.model, bert.subspace, tmp_path_factory.mktemp("f") / "features", task="features",
                         fused=True)


def test_fused_file_manifest_and_ops(features):
    manifest = json.loads((features / names.BUNDLE_MANIFEST).read_text())
    assert manifest["files"]["fused"] == FUSED and (features / FUSED).is_file()
    assert manifest["fusion"] == {"file": FUSED, "ops": {"Attention": 2, "BiasGelu": 2, "SkipLayerNormalization": 4},
                                  "reason": None}
    assert manifest["verification"]["fused"]["max_abs_diff"] <= TOL
    ops = [n.op_type for n in onnx.load(str(features / FUSED)).graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops  # the attention core is gone, one op per layer


def test_coefficient_inputs_keep_names_shapes_and_defaults(features):
    def optional_inputs(path):
        model = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return {i.name: ([d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim], inits[i.name])
                for i in model.graph.input if i.name in inits}

    plain, fused = optional_inputs(features / names.BUNDLE_MODEL), optional_inputs(features / FUSED)
    assert plain.keys() == fused.keys() and len(plain) == 8  # 2 layers x (query, value) x (coeff_A, coeff_B)
    for name, (shape, default) in plain.items():
        assert fused[name][0] == shape and np.array_equal(fused[name][1], default)


@pytest.mark.parametrize("pad", ["right", "both"])
def test_two_users_match_unfused_and_torch(bert, features, users, pad):
    toks, outs = tokens(pad), []
    for user in users:
        got = run(features / FUSED, user.inputs(), toks)
        assert np.abs(got - run(features / names.BUNDLE_MODEL, user.inputs(), toks)).max() <= TOL
        assert np.abs(got - torch_features(bert, user, toks)).max() <= TOL
        outs.append(got)
    assert np.abs(outs[0] - outs[1]).max() > 100 * TOL  # the users differ: the branches act inside Attention
    assert np.abs(outs[0] - run(features / FUSED, toks=toks)).max() > 100 * TOL  # and differ from the zero default


def test_token_states_match_too(features, users):
    """Every output agrees, not only the pooled one (last_hidden_state where the graph has it)."""
    if len(onnx.load(str(features / FUSED)).graph.output) < 2:
        pytest.skip("no token-state output in this bundle")
    feeds = users[0].inputs()
    got, want = (run(features / f, feeds, output=1) for f in (FUSED, names.BUNDLE_MODEL))
    assert np.abs(got - want).max() <= TOL


def test_runtime_serves_the_fused_variant(features, users, tmp_path):
    from edge_lorax.formats.user import write_user
    from edge_lorax.runtime import open_bundle
    from edge_lorax.runtime.bundle import SessionConfig
    from edge_lorax.runtime.infer import run_arrays
    from edge_lorax.runtime.users import load_user

    path = write_user(users[1], tmp_path / "u.npz")
    got = {}
    for variant in ("fp32", "fused"):
        bundle = open_bundle(features, SessionConfig(threads=1, variant=variant))
        assert bundle.model_path.name == names.BUNDLE_VARIANT_FILES[variant]
        got[variant] = run_arrays(bundle, load_user(bundle, path), tokens())[names.FEATURES]
    assert np.abs(got["fp32"] - got["fused"]).max() <= TOL


def test_classification_bundle_with_user_defaults(bert, tmp_path):
    """--coeffs: the user's values are the defaults; head inputs stay as they are; logits equal the unfused graph's."""
    from edge_lorax.formats.user import write_user

    user = random_user(read_subspace(bert.subspace), 23, labels=2, scale=1.0)
    bundle = export_bundle(bert.model, bert.subspace, tmp_path / "c", write_user(user, tmp_path / "u.npz"),
                           task="classification", fused=True)
    assert np.abs(run(bundle / FUSED) - run(bundle / names.BUNDLE_MODEL)).max() <= TOL
    other = random_user(read_subspace(bert.subspace), 24, labels=2, scale=1.0).inputs()
    assert np.abs(run(bundle / FUSED, other) - run(bundle / names.BUNDLE_MODEL, other)).max() <= TOL


def test_per_example_graph_fuses(bert, users, tmp_path):
    bundle = export_bundle(bert.model, bert.subspace, tmp_path / "p", task="features", per_example=True, fused=True)
    assert (bundle / FUSED).is_file()
    toks = tokens()
    rows = [users[i % 2] for i in range(3)]  # a user per row
    feeds = {k: np.stack([u.inputs()[k] for u in rows]) for k in users[0].inputs()}
    got = run(bundle / FUSED, feeds, toks)
    assert np.abs(got - run(bundle / names.BUNDLE_MODEL, feeds, toks)).max() <= TOL
    for i, user in enumerate(rows):
        assert np.abs(got[i] - torch_features(bert, user, toks)[i]).max() <= TOL


def test_key_branch_is_fused(bert, tmp_path):
    sub = subspace_on(bert, ["query", "key", "value"], tmp_path)
    bundle = export_bundle(bert.model, sub, tmp_path / "k", task="features", fused=True, allow_base_mismatch=True)
    assert json.loads((bundle / names.BUNDLE_MANIFEST).read_text())["fusion"]["ops"]["Attention"] == 2
    user = random_user(read_subspace(sub), 5, scale=1.0)
    got = run(bundle / FUSED, user.inputs())
    assert np.abs(got - run(bundle / names.BUNDLE_MODEL, user.inputs())).max() <= TOL
    assert np.abs(got - run(bundle / FUSED)).max() > 100 * TOL


def test_a_dense_branch_refuses_with_a_reason(bert, tmp_path):
    sub = subspace_on(bert, ["query", "value", "intermediate.dense"], tmp_path)
    bundle = export_bundle(bert.model, sub, tmp_path / "d", task="features", fused=True, allow_base_mismatch=True)
    manifest = json.loads((bundle / names.BUNDLE_MANIFEST).read_text())
    assert manifest["fusion"]["file"] is None and "intermediate.dense" in manifest["fusion"]["reason"]
    assert "fused" not in manifest["files"] and not (bundle / FUSED).exists()
    with pytest.raises(FuseRefused, match="only query / key / value"):
        find_layers(onnx.load(str(bundle / names.BUNDLE_MODEL)))


def test_a_causal_graph_is_refused(tmp_path_factory):
    """GPT-2's fused c_attn is no q/k/v triple: the pass refuses rather than fuse causal attention."""
    gpt2 = tiny_setup("gpt2", tmp_path_factory.mktemp("gpt2"))
    bundle = export_bundle(gpt2.model, gpt2.subspace, tmp_path_factory.mktemp("g") / "g", task="causal-lm")
    with pytest.raises(FuseRefused):
        fuse_attention(onnx.load(str(bundle / names.BUNDLE_MODEL)), num_heads=2, hidden=32)
