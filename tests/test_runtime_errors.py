"""Bad users and bundles are refused at load time with one clear line naming the file and the fix; the CLI exits 1."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.cli import cli
from edge_lorax.formats import names
from edge_lorax.formats.onnx_adapter import write_onnx_adapter
from edge_lorax.formats.user import User, UserError, write_user
from edge_lorax.runtime import BundleError, load_user, open_bundle
from helpers.runtime import TEXTS, random_user, save_user, tiny_subspace


def _variant(setup, path, edit) -> str:
    """A copy of user0 with `edit(tensors, head)` applied, saved through the normal writer."""
    user = random_user(setup.subspace, 0)
    tensors, head = dict(user.coefficients), dict(user.head)
    edit(tensors, head)
    write_user(User(user.fingerprint, tensors, head, user.meta), path)
    return str(path)


FIRST = "bert.encoder.layer.0.attention.self.query"
A0 = names.coeff_name(FIRST, names.COEFF_A)


def _bad_files(setup, tmp):
    """(file, what the message must say) per refusal the issue lists."""
    other = tiny_subspace(seed=7)  # same shapes, another subspace
    other_user = random_user(other, 0)
    other_adapter = write_onnx_adapter(other_user.inputs(), tmp / f"other{names.ADAPTER_SUFFIX}", other_user.fingerprint)
    pickled = tmp / "pickled.npz"
    np.savez(pickled, **{A0: np.array([{"x": 1}], dtype=object)})
    return [
        (str(save_user(other, 0, tmp / "other.npz")), "made for subspace"),
        (str(other_adapter), "made for subspace model_version"),
        (_variant(setup, tmp / "missing.npz", lambda t, h: t.pop(A0)), f"missing tensor {A0}"),
        (_variant(setup, tmp / "extra.npz", lambda t, h: t.update({"bert.pooler.dense.coeff_A": t[A0]})),
         "bert.pooler.dense.coeff_A (1 extra) is not an input"),
        (_variant(setup, tmp / "shape.npz", lambda t, h: t.update({A0: np.zeros((2, 5), np.float32)})),
         f"{A0} has shape (2, 5), bundle "),
        (_variant(setup, tmp / "nan.npz", lambda t, h: t[A0].__setitem__((0, 0), np.nan)), "NaN or Inf"),
        (_variant(setup, tmp / "headpart.npz", lambda t, h: h.pop(names.HEAD_BIAS)), f"missing tensor {names.HEAD_BIAS}"),
        (str(pickled), "pickled objects, which are never loaded"),
    ]


def test_bad_users_refused_with_clear_message(bundle, setup, tmp_path):
    for path, message in _bad_files(setup, tmp_path):
        with pytest.raises(UserError) as err:
            load_user(bundle, path)
        text = str(err.value)
        assert message in text and path in text and "\n" not in text, text


def test_bad_users_cli_exit_1(setup, tmp_path):
    runner = CliRunner()
    for path, message in _bad_files(setup, tmp_path):
        res = runner.invoke(cli, ["run", str(setup.bundle), "--coeffs", path, TEXTS[0]])
        assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output


def test_float64_refused(bundle, setup, tmp_path):
    path = tmp_path / "f64.npz"
    user = random_user(setup.subspace, 0)
    np.savez(path, **{k: v.astype(np.float64) for k, v in user.inputs().items()},
             **{names.META_KEY: np.array(json.dumps({"fingerprint": user.fingerprint}))})
    with pytest.raises(UserError, match="float64, expected float32"):
        load_user(bundle, path)


def test_wrong_fingerprint_bundle(setup, tmp_path):
    """A manifest that names another subspace than the graph inside: refused at open; its users refused at load."""
    bad = tmp_path / "bundle"
    shutil.copytree(setup.bundle, bad)
    manifest = json.loads((bad / names.BUNDLE_MANIFEST).read_text())
    manifest["fingerprint"] = "0000000000000000"
    (bad / names.BUNDLE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="mixes two exports"):
        open_bundle(bad)
    res = CliRunner().invoke(cli, ["run", str(bad), "--coeffs", str(setup.users[0]), TEXTS[0]])
    assert res.exit_code == 1 and "mixes two exports" in res.output


def test_user_of_a_bundle_with_another_fingerprint(setup, tmp_path):
    """The graph's metadata absent: the manifest fingerprint alone still keeps other subspaces' users out."""
    import onnx

    bad = tmp_path / "bundle"
    shutil.copytree(setup.bundle, bad)
    model = onnx.load(str(bad / names.BUNDLE_MODEL))
    del model.metadata_props[:]
    onnx.save(model, str(bad / names.BUNDLE_MODEL))
    manifest = json.loads((bad / names.BUNDLE_MANIFEST).read_text())
    manifest["fingerprint"] = "0000000000000000"
    (bad / names.BUNDLE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="this one is 0000000000000000; re-project or retrain"):
        load_user(open_bundle(bad), setup.users[0])


def test_manifest_that_disagrees_with_the_graph(setup, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(setup.bundle, bad)
    manifest = json.loads((bad / names.BUNDLE_MANIFEST).read_text())
    manifest["coefficients"][A0] = [2, 5]
    (bad / names.BUNDLE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"is \(2, 4\) in the graph, \(2, 5\) in the manifest"):
        open_bundle(bad)


def test_not_a_bundle_and_missing_files(setup, tmp_path):
    with pytest.raises(BundleError, match="not a bundle folder"):
        open_bundle(tmp_path)
    with pytest.raises(BundleError, match="no merged model in this bundle"):
        open_bundle(setup.bundle, "mobile").with_variant("merged")
    with pytest.raises(BundleError, match="unknown profile 'tablet'"):
        open_bundle(setup.bundle, "tablet")
    with pytest.raises(UserError, match="no such user file"):
        load_user(open_bundle(setup.bundle), tmp_path / "nobody.npz")
