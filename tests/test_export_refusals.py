"""The exporter's refusals: each raises a message naming the cause and fix, the CLI exits 1 with it, and no
output (not even a temp folder) is left behind."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from edge_lorax.cli import cli  # noqa: E402
from edge_lorax.export import (
    export_bundle,  # noqa: E402
    verify,  # noqa: E402
)
from edge_lorax.formats import names  # noqa: E402
from edge_lorax.formats.errors import InputError  # noqa: E402
from edge_lorax.formats.subspace import read_subspace  # noqa: E402
from edge_lorax.formats.user import User, write_user  # noqa: E402
from helpers import random_user  # noqa: E402
from helpers.tiny import tiny_model  # noqa: E402


def leftovers(parent) -> list:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def cli_export(bert, out, *extra):
    args = ["export", "--model", str(bert.model), "--subspace", str(bert.subspace), "-o", str(out), *extra]
    return CliRunner().invoke(cli, args)


def foreign_user(bert, path):
    """A user whose fingerprint names another subspace."""
    user = random_user(read_subspace(bert.subspace), 1)
    return write_user(User("0123456789abcdef", user.coefficients, user.head, user.meta), path)


def test_fingerprint_mismatch(bert, tmp_path):
    user = foreign_user(bert, tmp_path / "other.npz")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="made for subspace 0123456789abcdef.*re-project or retrain"):
        export_bundle(bert.model, bert.subspace, out, user)
    res = cli_export(bert, out, "--coeffs", str(user))
    assert res.exit_code == 1 and "made for subspace 0123456789abcdef" in res.output
    assert leftovers(tmp_path) == ["other.npz"]


def test_model_of_another_shape(bert, tmp_path):
    """Same architecture and id, wider layers: the subspace's shapes do not fit."""
    from transformers import BertConfig, BertModel

    wide = tmp_path / bert.model.name  # same folder name, so the id matches and the shape check is what refuses
    BertModel(BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(wide)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"layer is \(48, 48\), subspace has \(32, 32\); wrong base model"):
        export_bundle(wide, bert.subspace, out, task="features")
    res = CliRunner().invoke(cli, ["export", "--model", str(wide), "--subspace", str(bert.subspace), "-o", str(out)])
    assert res.exit_code == 1 and "wrong base model for this subspace" in res.output
    assert leftovers(tmp_path) == [wide.name]


def test_model_of_another_architecture(bert, tmp_path):
    gpt2 = tiny_model("gpt2", tmp_path / bert.model.name)
    with pytest.raises(InputError, match="not found in GPT2LMHeadModel"):
        export_bundle(gpt2, bert.subspace, tmp_path / "out")
    assert leftovers(tmp_path) == [gpt2.name]


def test_model_with_another_id(bert, tmp_path):
    other = tiny_model("bert", tmp_path / "some-other-model")
    with pytest.raises(ValueError, match="subspace was built for 'tiny-bert'.*--allow-base-mismatch"):
        export_bundle(other, bert.subspace, tmp_path / "out")
    assert export_bundle(other, bert.subspace, tmp_path / "out", task="features", allow_base_mismatch=True).is_dir()


def test_existing_output_dir(bert, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        export_bundle(bert.model, bert.subspace, out, task="features")
    res = cli_export(bert, out, "--task", "features")
    assert res.exit_code == 1 and "already exists; pass --overwrite" in res.output
    assert leftovers(out) == ["keep.txt"] and leftovers(tmp_path) == ["out"]
    res = cli_export(bert, out, "--task", "features", "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / names.BUNDLE_MANIFEST).is_file() and not (out / "keep.txt").exists()


def test_failed_parity_check_leaves_nothing(bert, tmp_path, monkeypatch):
    monkeypatch.setitem(verify.TOLERANCES, "fp32", 0.0)
    with pytest.raises(RuntimeError, match="ONNX Runtime differs from torch by .* nothing written"):
        export_bundle(bert.model, bert.subspace, tmp_path / "out", bert.user, task="features")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("extra, message", [
    (["--merge"], "pass that user with --coeffs"),
    (["--merge", "--per-example", "--coeffs", "USER"], "exclude each other"),
    (["--task", "regression", "--coeffs", "HEAD2"], "head has 2 labels, task regression needs 1"),
    (["--quantize", "int4"], "--quantize int4 and --builder-option are for decoder bundles"),  # the encoder target's
    (["--builder-option", "algo_config=k_quant_mixed"], "--quantize int4 and --builder-option are for decoder bundles"),
])
def test_bad_option_combinations(bert, tmp_path, extra, message):
    head2 = write_user(random_user(read_subspace(bert.subspace), 3, labels=2), tmp_path / "h.npz")
    extra = [{"USER": str(bert.user), "HEAD2": str(head2)}.get(e, e) for e in extra]
    res = cli_export(bert, tmp_path / "out", *extra)
    assert res.exit_code == 1 and message in res.output
    assert leftovers(tmp_path) == ["h.npz"]


def test_per_example_coefficients_file_is_refused(bert, tmp_path):
    user = random_user(read_subspace(bert.subspace), 4)
    batched = User(user.fingerprint, {k: v[None] for k, v in user.coefficients.items()}, {}, {})
    path = write_user(batched, tmp_path / "batched.npz")
    with pytest.raises(ValueError, match=r"\(1, 4, 4\).*one user.s \(r, K\).*per-example files are not exported"):
        export_bundle(bert.model, bert.subspace, tmp_path / "out", path)


def test_every_target_checks_and_writes():
    """export.bundle dispatches by the manifest's target names; each target module offers check(job), write(job, tmp)."""
    from edge_lorax.export.bundle import TARGETS
    from edge_lorax.formats.bundle import TARGETS as TARGET_NAMES

    assert set(TARGETS) <= set(TARGET_NAMES) and len(TARGETS) >= 2
    assert all(callable(module.check) and callable(module.write) for module in TARGETS.values())


def test_unknown_option_is_refused_before_any_work(bert, tmp_path):
    """export_bundle's **options are ExportConfig's fields: a misspelt one is a TypeError naming it, nothing written."""
    from edge_lorax.export import ExportConfig

    with pytest.raises(TypeError, match="quantise"):
        export_bundle(bert.model, bert.subspace, tmp_path / "out", config=ExportConfig(task="features"), quantise="int8")
    assert leftovers(tmp_path) == []


def test_an_int8_graph_off_by_more_than_its_tolerance_is_one_line(tmp_path, monkeypatch):
    """A quantized variant beyond its tolerance is a one-line refusal naming the variant and the fix (export
    without --quantize), checked before the .ort / fused / gradient work; exit 1, nothing written (was a 39-line
    RuntimeError traceback, issue 26)."""
    from click.testing import CliRunner

    from edge_lorax.cli import cli
    from edge_lorax.export import verify
    from helpers.tiny import tiny_setup

    setup = tiny_setup("bert", tmp_path / "t")
    monkeypatch.setitem(verify.TOLERANCES, "int8", 1e-12)
    res = CliRunner().invoke(cli, ["export", "--model", str(setup.model), "--subspace", str(setup.subspace), "-o",
                                   str(tmp_path / "b"), "--quantize", "int8", "--ort-format"])
    assert res.exit_code == 1 and "does not keep its accuracy at int8, export it without --quantize" in res.output
    errors = [line for line in res.stderr.splitlines() if not line.startswith("export: ")]  # progress lines aside
    assert len(errors) == 1 and errors[0].startswith("Error: ") and res.stdout == "" and not (tmp_path / "b").exists()
    assert "export: verifying against torch and quantizing to int8" in res.stderr and "writing .ort" not in res.stderr
