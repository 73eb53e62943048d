"""The gradient graph (export/gradient.py): ONNX Runtime's loss and gradients equal torch autograd's through the eager
export wrapper, on padded batches of a size and length other than the traced ones, for classification and regression;
a graph whose outputs are mislabelled is caught by the export check; bundles that cannot use one get none."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from edge_lorax.export import gradient
from edge_lorax.export.graph import load_task_model, prepare, sample_tokens
from edge_lorax.formats import names
from edge_lorax.formats.tasks import target_dtype
from helpers.runtime import get_setup


@pytest.fixture(scope="module", params=[names.TASK_CLASSIFICATION, names.TASK_REGRESSION])
def graph(request, tmp_path_factory):
    setup = get_setup(tmp_path_factory)
    labels = 2 if request.param == names.TASK_CLASSIFICATION else 1
    model, in_checkpoint = load_task_model(setup.model, request.param, labels)
    prepared = prepare(model, in_checkpoint, setup.subspace, None, request.param, False)
    path = tmp_path_factory.mktemp("grad") / names.BUNDLE_MODEL_GRADIENT
    gradient.save_gradient(gradient.export_gradient(prepared, sample_tokens(model.config.vocab_size, 2, 5)), path)
    return prepared, path


def _random_feeds(prepared, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (rng.random(v.shape, dtype=np.float32) - 0.5) for k, v in prepared.defaults.items()}


def test_loss_and_gradients_equal_torch_autograd(graph):
    prepared, path = graph
    tokens = sample_tokens(prepared.wrapper.model.config.vocab_size, batch=4, seq=9, seed=3)
    tokens[names.ATTENTION_MASK][1, 4:] = 0  # a padded row
    rng = np.random.default_rng(0)
    labels = (rng.integers(0, 2, 4) if prepared.spec.task == names.TASK_CLASSIFICATION else
              rng.standard_normal(4)).astype(target_dtype(prepared.spec.task))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    assert outs[0] == names.LOSS and sorted(outs[1:]) == sorted(names.GRAD_PREFIX + k for k in prepared.defaults)
    for seed in (1, 2):
        feeds = _random_feeds(prepared, seed)
        loss, want = gradient.torch_gradients(prepared, tokens, labels, feeds)
        got = dict(zip(outs, sess.run(None, {**tokens, names.LABELS: labels, **feeds})))
        assert abs(float(got[names.LOSS]) - loss) < 1e-5
        assert max(np.abs(got[names.GRAD_PREFIX + k] - g).max() for k, g in want.items()) < 1e-5
        assert max(np.abs(g).max() for g in want.values()) > 1e-3  # gradients that are not all zero


def test_mislabelled_gradients_are_caught(graph, tmp_path):
    import onnx

    prepared, path = graph
    proto = onnx.load(str(path))
    a, b = [o for o in proto.graph.output if o.name.endswith(names.COEFF_A)][:2]  # two modules' coeff_A (same shape)
    swap = {a.name: b.name, b.name: a.name}
    for node in proto.graph.node:
        node.output[:] = [swap.get(x, x) for x in node.output]
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    tokens = sample_tokens(prepared.wrapper.model.config.vocab_size, batch=3, seq=6, seed=5)
    with pytest.raises(RuntimeError, match="differs from torch autograd"):
        gradient.check_gradient(tmp_path / "bad.onnx", prepared, tokens)
    assert gradient.check_gradient(path, prepared, tokens)["max_abs_diff"] < 1e-5


def test_only_shared_head_bundles_get_a_gradient_graph(tmp_path_factory):
    setup = get_setup(tmp_path_factory)
    shared = json.loads((setup.bundle / names.BUNDLE_MANIFEST).read_text())
    per_example = json.loads((setup.per_example / names.BUNDLE_MANIFEST).read_text())
    assert shared["files"]["gradient"] == names.BUNDLE_MODEL_GRADIENT and (setup.bundle / names.BUNDLE_MODEL_GRADIENT).is_file()
    assert shared["gradient"]["loss"] == "cross_entropy" and shared["gradient"]["check"]["max_abs_diff"] < 1e-5
    assert "gradient" not in per_example["files"] and not (setup.per_example / names.BUNDLE_MODEL_GRADIENT).exists()
