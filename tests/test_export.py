"""The ONNX exporter on tiny random models (BERT Linear, GPT-2 Conv1D, Llama GQA): parity with the injected torch
model, coefficient inputs that survive and act, per-example, merged, adapter files, int8, .ort, an independent
reference evaluator, determinism and every refusal (library and CLI, nothing left behind)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from edge_lorax.builder.inject import inject_subspace  # noqa: E402
from edge_lorax.export import export_bundle  # noqa: E402
from edge_lorax.export.graph import mean_pool, sample_tokens  # noqa: E402
from edge_lorax.export.passes import overridable  # noqa: E402
from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError  # noqa: E402
from edge_lorax.formats.onnx_adapter import (
    fingerprint_version,  # noqa: E402
    read_onnx_adapter,  # noqa: E402
)
from edge_lorax.formats.subspace import read_subspace  # noqa: E402
from edge_lorax.formats.user import User, write_user  # noqa: E402
from helpers import ort_session, random_user  # noqa: E402
from helpers.tiny import tiny_setup  # noqa: E402

TOL = 1e-4  # fp32 ORT vs torch, max abs diff
TOKENS = sample_tokens(99, batch=3, seq=9, seed=5)  # unlike the trace shapes (2, 7); last row padded


def run(path, feeds=None, run_options=None, tokens=TOKENS) -> np.ndarray:
    return ort_session(path).run(None, {**tokens, **(feeds or {})}, run_options)[0]


def graph_inputs(path) -> set:
    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


@torch.no_grad()
def torch_reference(setup, coeffs, task: str, tokens=TOKENS) -> np.ndarray:
    """A fresh model with the subspace injected (coefficients as parameters) and the user's head: no export code."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == names.TASK_CLASSIFICATION:
        model = AutoModelForSequenceClassification.from_pretrained(setup.model, num_labels=2).eval()
        model.classifier.weight.copy_(torch.from_numpy(coeffs.head[names.HEAD_WEIGHT_T].T.copy()))
        model.classifier.bias.copy_(torch.from_numpy(coeffs.head[names.HEAD_BIAS]))
    else:
        model = (AutoModel if task == names.TASK_FEATURES else AutoModelForCausalLM).from_pretrained(setup.model).eval()
    if coeffs is not None:
        inject_subspace(model, read_subspace(setup.subspace), coeffs=coeffs.coefficients)
    ids, mask = (torch.from_numpy(tokens[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK))
    out = model(input_ids=ids, attention_mask=mask)
    return (mean_pool(out.last_hidden_state, mask) if task == names.TASK_FEATURES else out.logits).numpy()


@pytest.fixture(scope="module")
def users(bert):
    """Three random users with 2-label heads (seeded)."""
    sub = read_subspace(bert.subspace)
    return [random_user(sub, seed, labels=2) for seed in (11, 12, 13)]


@pytest.fixture(scope="module")
def shared(bert, tmp_path_factory):
    """Classification bundle with zero defaults (no --coeffs): coefficient and head inputs, int8 and .ort too."""
    return export_bundle(bert.model, bert.subspace, tmp_path_factory.mktemp("b") / "shared", task="classification",
                         quantize="int8", ort_format=True)


def test_coefficients_are_optional_graph_inputs(shared, users):
    want = set(users[0].inputs())
    for variant in ("fp32", "int8"):
        model = onnx.load(str(shared / names.BUNDLE_VARIANT_FILES[variant]))
        assert want <= {i.name for i in model.graph.input}
        assert want <= set(overridable(model))  # each has a default: ORT's optional-input / adapter path
    manifest = json.loads((shared / names.BUNDLE_MANIFEST).read_text())
    assert set(manifest["coefficients"]) | set(manifest["head"]["inputs"]) == want
    assert [i["name"] for i in manifest["inputs"]][:2] == [names.INPUT_IDS, names.ATTENTION_MASK]


def test_three_users_match_injected_torch(bert, shared, users):
    outs = []
    for user in users:
        got = run(shared / names.BUNDLE_MODEL, user.inputs())
        assert np.abs(got - torch_reference(bert, user, names.TASK_CLASSIFICATION)).max() <= TOL
        outs.append(got)
    assert np.abs(outs[0] - outs[1]).max() > 100 * TOL  # the users really differ, so the check has teeth


def test_coefficients_alone_move_the_output_as_torch_predicts(bert, shared, users):
    """Same head, different coefficients: the change in ORT's output equals the change in torch's."""
    strong = {k: 4 * v for k, v in users[1].coefficients.items()}  # U(-2, 2): the tiny head is small (N(0, 1/32))
    a, b = users[0], User(users[0].fingerprint, strong, users[0].head)
    got = run(shared / names.BUNDLE_MODEL, b.inputs()) - run(shared / names.BUNDLE_MODEL, a.inputs())
    want = torch_reference(bert, b, "classification") - torch_reference(bert, a, "classification")
    assert np.abs(want).max() > 100 * TOL and np.abs(got - want).max() <= TOL


def test_zero_coefficients_are_the_plain_base_model(bert, tmp_path):
    from transformers import AutoModel

    bundle = export_bundle(bert.model, bert.subspace, tmp_path / "f", task="features")
    base = AutoModel.from_pretrained(bert.model).eval()
    with torch.no_grad():
        ids, mask = (torch.from_numpy(TOKENS[k]) for k in (names.INPUT_IDS, names.ATTENTION_MASK))
        want = mean_pool(base(input_ids=ids, attention_mask=mask).last_hidden_state, mask).numpy()
    assert np.abs(run(bundle / names.BUNDLE_MODEL) - want).max() <= 1e-5  # no feeds: every default is zero


def test_per_example_batch_equals_separate_runs(bert, shared, users, tmp_path):
    bundle = export_bundle(bert.model, bert.subspace, tmp_path / "pe", task="classification", per_example=True)
    feeds = {k: np.stack([u.inputs()[k] for u in users]) for k in users[0].inputs()}  # (3, ...): one user per row
    mixed = run(bundle / names.BUNDLE_MODEL, feeds)
    for i, user in enumerate(users):
        assert np.abs(mixed[i] - run(shared / names.BUNDLE_MODEL, user.inputs())[i]).max() <= 1e-5
    manifest = json.loads((bundle / names.BUNDLE_MANIFEST).read_text())
    assert manifest["mode"] == names.MODE_PER_EXAMPLE
    assert all(shape[0] == names.DIM_BATCH for shape in manifest["coefficients"].values())


def test_merged_equals_unmerged_with_the_users_feed(bert, shared, users, tmp_path):
    user = write_user(users[2], tmp_path / "u2.npz")
    merged = export_bundle(bert.model, bert.subspace, tmp_path / "m", user, merge=True)
    assert graph_inputs(merged / names.BUNDLE_MODEL) == {names.INPUT_IDS, names.ATTENTION_MASK}
    got = run(merged / names.BUNDLE_MODEL)
    assert np.abs(got - run(shared / names.BUNDLE_MODEL, users[2].inputs())).max() <= TOL
    assert json.loads((merged / names.BUNDLE_MANIFEST).read_text())["mode"] == names.MODE_MERGED


def test_onnx_adapter_equals_feeding_the_npz(bert, shared, users, tmp_path):
    """The adapter written for user 1 activates on the zero-default bundle exactly like feeding user 1's npz."""
    user = write_user(users[1], tmp_path / "alice.npz")
    own = export_bundle(bert.model, bert.subspace, tmp_path / "own", user)  # task from the head: classification
    adapter = own / ("alice" + names.ADAPTER_SUFFIX)
    stored, version = read_onnx_adapter(adapter)
    assert version == fingerprint_version(users[1].fingerprint) != 0  # the subspace travels in model_version
    assert sorted(stored) == sorted(users[1].inputs())
    assert all(np.array_equal(stored[k], v) for k, v in users[1].inputs().items())
    options = ort.RunOptions()
    lora = ort.LoraAdapter()
    lora.Load(str(adapter))
    options.add_active_adapter(lora)
    via_adapter = run(shared / names.BUNDLE_MODEL, run_options=options)
    assert np.abs(via_adapter - run(shared / names.BUNDLE_MODEL, users[1].inputs())).max() == 0.0
    assert np.abs(run(own / names.BUNDLE_MODEL) - via_adapter).max() <= 1e-6  # its defaults are that user


def test_int8_within_tolerance_and_coefficients_still_act(bert, shared, users):
    int8 = shared / names.BUNDLE_MODEL_INT8
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops  # really quantized
    outs = []
    for user in users:
        got, want = run(int8, user.inputs()), torch_reference(bert, user, "classification")
        assert np.abs(got - want).max() <= 0.25 * max(1.0, np.abs(want).max())  # the stated int8 tolerance
        outs.append(got)
    assert np.abs(outs[0] - outs[1]).max() > 0.1  # the inputs still change the output
    manifest = json.loads((shared / names.BUNDLE_MANIFEST).read_text())
    assert manifest["verification"]["int8"]["response"] >= 0.9


def test_ort_format_loads_runs_and_agrees(shared, users):
    for onnx_name, ort_name in ((names.BUNDLE_MODEL, names.BUNDLE_MODEL_ORT),
                                (names.BUNDLE_MODEL_INT8, names.BUNDLE_MODEL_INT8_ORT)):
        got, want = run(shared / ort_name, users[0].inputs()), run(shared / onnx_name, users[0].inputs())
        assert np.abs(got - want).max() <= TOL


def test_checker_and_reference_evaluator_agree_with_ort(shared, users):
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops.op_gather_elements import GatherElements

    class TakeAlongAxis(GatherElements):
        """onnx 1.23's GatherElements uses np.choose (at most 32 choices) and its fallback is wrong for axis=1 over
        BERT's 64 buffered token types; np.take_along_axis is the op's definition."""

        op_domain = ""

        def _run(self, data, indices, axis=None):
            return (np.take_along_axis(data, indices.astype(np.int64), axis=axis),)

    TakeAlongAxis.__name__ = "GatherElements"
    path = shared / names.BUNDLE_MODEL
    for name in (names.BUNDLE_MODEL, names.BUNDLE_MODEL_INT8):
        onnx.checker.check_model(str(shared / name), full_check=True)
    feeds = {**TOKENS, **users[0].inputs()}
    ref = ReferenceEvaluator(str(path), new_ops=[TakeAlongAxis]).run([names.LOGITS], feeds)[0]
    assert np.abs(ref - run(path, users[0].inputs())).max() <= TOL


@pytest.mark.parametrize("arch", ["gpt2"])  # Llama models get KV-cache bundles: tests/test_llm_bundle.py
def test_decoders_causal_lm_parity(arch, tmp_path):
    setup = tiny_setup(arch, tmp_path)
    bundle = export_bundle(setup.model, setup.subspace, tmp_path / "b", setup.user)  # task: causal-lm from config
    manifest = json.loads((bundle / names.BUNDLE_MANIFEST).read_text())
    assert manifest["task"] == names.TASK_CAUSAL_LM and manifest["outputs"][0]["shape"][:2] == ["batch", "sequence"]
    sub = read_subspace(setup.subspace)
    for user in [random_user(sub, s) for s in (1, 2, 3)]:
        got = run(bundle / names.BUNDLE_MODEL, user.inputs())
        assert np.abs(got - torch_reference(setup, user, names.TASK_CAUSAL_LM)).max() <= TOL
    from edge_lorax.runtime import open_bundle, predict

    with pytest.raises(InputError, match="a causal-lm bundle without a KV cache; .*run_arrays for its logits"):
        predict(open_bundle(bundle), None, ["hello"], max_length=16)  # was an IndexError traceback (issue 25)


def test_dynamo_exporter_gives_the_same_graph_semantics(bert, users, tmp_path):
    bundle = export_bundle(bert.model, bert.subspace, tmp_path / "d", task="classification", exporter="dynamo")
    assert set(users[0].inputs()) <= set(overridable(onnx.load(str(bundle / names.BUNDLE_MODEL))))
    got = run(bundle / names.BUNDLE_MODEL, users[0].inputs())
    assert np.abs(got - torch_reference(bert, users[0], "classification")).max() <= TOL


def test_regression_head_from_the_coefficients(bert, tmp_path):
    user = write_user(random_user(read_subspace(bert.subspace), 5, labels=1), tmp_path / "r.npz")
    bundle = export_bundle(bert.model, bert.subspace, tmp_path / "r", user)
    manifest = json.loads((bundle / names.BUNDLE_MANIFEST).read_text())
    assert manifest["task"] == names.TASK_REGRESSION and manifest["labels"] == 1
    assert run(bundle / names.BUNDLE_MODEL).shape == (3, 1)


def test_same_inputs_give_bit_identical_files(bert, tmp_path):
    paths = [export_bundle(bert.model, bert.subspace, tmp_path / f"x{i}", bert.user, task="features", quantize="int8")
             for i in range(2)]
    for name in (names.BUNDLE_MODEL, names.BUNDLE_MODEL_INT8, names.BUNDLE_MANIFEST, "user" + names.ADAPTER_SUFFIX):
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes(), name


def test_manifest_describes_the_files(shared):
    manifest = json.loads((shared / names.BUNDLE_MANIFEST).read_text())
    assert manifest["kind"] == names.BUNDLE_KIND and manifest["fingerprint"]
    for variant in ("fp32", "int8", "ort", "int8_ort"):
        assert (shared / manifest["files"][variant]).is_file()
        assert manifest["verification"][variant]["max_abs_diff"] <= manifest["tolerances"][variant] * \
            manifest["verification"][variant]["scale"]
    meta = {p.key: p.value for p in onnx.load(str(shared / names.BUNDLE_MODEL), load_external_data=False).metadata_props}
    assert meta["edge_lorax.fingerprint"] == manifest["fingerprint"]
    assert manifest["head"]["default"] == "zeros"  # the tiny checkpoint has no classifier


def test_inspect_tells_what_a_bundle_holds(shared):
    """`inspect BUNDLE` (issue 26): target, base model, labels, the graphs it holds, the default user, the longest
    input and each precision's verdict — as JSON, and as indented lines (not a dict repr) in text mode."""
    from click.testing import CliRunner

    from edge_lorax.cli import cli

    res = CliRunner().invoke(cli, ["inspect", str(shared), "--json"])
    got = json.loads(res.stdout)
    assert got["target"] == "onnx-encoder" and got["default_user"] == "zeros" and got["labels"] == ["LABEL_0", "LABEL_1"]
    assert got["variants"] == ["fp32", "int8", "int8_ort", "ort"]  # export_bundle writes no gradient graph by default
    assert got["max_tokens"] == json.loads((shared / "config.json").read_text())["max_position_embeddings"]
    assert set(got["verification"]) == {"fp32", "int8", "ort", "int8_ort"}
    assert all(v.endswith(": pass") for v in got["verification"].values())
    text = CliRunner().invoke(cli, ["inspect", str(shared)]).stdout
    assert "verification:\n  fp32: max |Δ|" in text and "{" not in text
