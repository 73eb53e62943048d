"""edge-lorax advise (issue 30): the share of a task's gradient a subspace can follow, against random bases of the
same K, on a tiny BERT with a tokenizer (seconds). A subspace planted on the task's own gradient directions must be
judged likely to help, a random one not; the no-data mode, the CLI's JSON and the refusals."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.builder.advise import RANDOM_DRAWS, advise, captured_share, task_gradients
from edge_lorax.cli import cli
from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.subspace import ModuleSubspace, Subspace, fingerprint_tensors, read_subspace, write_subspace
from helpers.runtime import MODEL_NAME, WORDS, tiny_model_dir, tiny_subspace

K = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory, torch_one_thread):
    root = tmp_path_factory.mktemp("advise")
    model = tiny_model_dir(root / MODEL_NAME)
    rng = np.random.default_rng(0)
    rows = ["text,label"] + [f"{' '.join(rng.choice(WORDS, 5))} {'great fun' if i % 2 else 'awful boring'},{i % 2}"
                             for i in range(40)]
    (root / "task.csv").write_text("\n".join(rows) + "\n")
    random_sub = write_subspace(tiny_subspace(), root / "random-sub")
    texts = [r.rsplit(",", 1)[0] for r in rows[1:]]
    grads = task_gradients(model, read_subspace(random_sub), texts, np.array([i % 2 for i in range(40)]))
    planted = write_subspace(_planted(grads), root / "planted-sub")
    return root, model, random_sub, planted, grads


def _planted(grads: dict) -> Subspace:
    """K=4 components per module: the top singular directions of the task's own gradient."""
    modules, tensors = {}, {}
    for m, g in grads.items():
        u, _, vt = np.linalg.svd(g.astype(np.float64))
        ms = ModuleSubspace(np.ascontiguousarray(vt[:K], np.float32), np.ascontiguousarray(u[:, :K], np.float32),
                            np.full(K, 0.25, np.float32), np.full(K, 0.25, np.float32), 2, K)
        modules[m] = ms
        tensors[f"{m}.{names.COMPONENTS_A}"], tensors[f"{m}.{names.COMPONENTS_B}"] = ms.components_A, ms.components_B
        tensors[f"{m}.explained_A"], tensors[f"{m}.explained_B"] = ms.explained_A, ms.explained_B
    config = {"format_version": names.FORMAT_VERSION, "kind": "edge-lorax-subspace", "base_model": MODEL_NAME,
              "mean": "drop", "seed": 0, "sources": [{"name": f"s{i}"} for i in range(3)],
              "modules": {m: {"out": g.shape[0], "in": g.shape[1], "K": K, "r": 2, "principal": K} for m, g in grads.items()}}
    config["fingerprint"] = fingerprint_tensors(tensors, config)
    return Subspace(modules, config)


def test_gradients_have_the_layer_shapes(setup):
    _, _, _, _, grads = setup
    assert len(grads) == 4 and all(g.shape == (32, 32) and g.dtype == np.float32 and np.abs(g).sum() > 0
                                   for g in grads.values())


def test_captured_share_formula():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((6, 5))
    ca, cb = np.eye(5)[:2], np.eye(6)[:, :3]  # (K, in), (out, K): rows 0-2 x columns 0-1 of g
    inside, total = captured_share(g, ca, cb)
    assert inside == pytest.approx(np.sum(g[:3, :2] ** 2)) and total == pytest.approx(np.sum(g ** 2))


def test_planted_subspace_is_likely_random_is_not(setup):
    root, model, random_sub, planted, grads = setup
    good = advise(planted, root / "task.csv", model=str(model), rows=40)
    top = sum(np.sum(np.linalg.svd(g.astype(np.float64), compute_uv=False)[:K] ** 2) for g in grads.values())
    assert good.captured == pytest.approx(top / sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()), rel=1e-4)
    assert good.verdict == "likely to help" and good.examples == 40 and good.sources == 3
    assert good.random_mean == pytest.approx(K * K / (32 * 32), rel=0.5)  # E[share] of a random K-basis: K²/(in·out)
    bad = advise(random_sub, root / "task.csv", model=str(model), rows=40)
    assert bad.verdict == "unlikely to help" and bad.captured < 3 * bad.random_mean
    assert set(bad.per_module) == set(grads) and RANDOM_DRAWS == 8


def test_no_data_and_cli_json(setup):
    root, model, _, planted, _ = setup
    plain = advise(planted)
    assert plain.verdict == "no examples" and plain.captured is None and plain.k == K and plain.modules == 4
    out = CliRunner().invoke(cli, ["advise", str(planted), "--data", str(root / "task.csv"), "--model", str(model),
                                   "--rows", "40", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["verdict"] == "likely to help" and data["captured"] > 10 * data["random_mean"]
    text = CliRunner().invoke(cli, ["advise", str(planted), "--data", str(root / "task.csv"), "--model", str(model)])
    assert text.exit_code == 0 and "verdict: likely to help" in text.output


def test_refusals(setup, tmp_path):
    root, model, _, planted, _ = setup
    with pytest.raises(InputError, match="two labels"):  # the first 2 rows of the seeded order share a label
        advise(planted, root / "task.csv", model=str(model), rows=2, seed=_seed_with_one_label_first(root / "task.csv"))
    out = CliRunner().invoke(cli, ["advise", str(planted), "--data", "vader:nyt-regression", "--model", str(model)])
    assert out.exit_code != 0 and "classification task" in out.output and "Traceback" not in out.output


def _seed_with_one_label_first(path) -> int:
    from edge_lorax.builder.data import load_task

    return next(s for s in range(50) if len(set(load_task(path, seed=s).train.targets[:2].tolist())) == 1)
