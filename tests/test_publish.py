"""formats.atomic's one publish rule, for files and folders alike: without --overwrite an output that exists, or that
another process wrote while this one worked, is never replaced (OutputExistsError, ours discarded, nothing left
beside it); with --overwrite the new output is swapped in. And a batch with nothing to publish publishes nothing."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.cli import cli
from edge_lorax.formats.atomic import atomic_dir, atomic_file
from edge_lorax.formats.errors import OutputExistsError
from edge_lorax.formats.user import User, read_user, write_user

A = "m.coeff_A"


def user(value: float) -> User:
    return User("0123456789abcdef", {A: np.full((2, 3), value, np.float32), "m.coeff_B": np.zeros((3, 2), np.float32)})


def test_a_user_file_is_never_replaced_without_overwrite(tmp_path):
    path = write_user(user(1.0), tmp_path / "u.npz", overwrite=False)
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        write_user(user(2.0), path, overwrite=False)
    assert read_user(path).coefficients[A][0, 0] == 1.0
    write_user(user(3.0), path, overwrite=True)
    assert read_user(path).coefficients[A][0, 0] == 3.0 and sorted(os.listdir(tmp_path)) == ["u.npz"]


@pytest.mark.parametrize("make", ["file", "dir"])
def test_an_output_that_appears_meanwhile_is_kept(tmp_path, make):
    """Two writers of one output without --overwrite (two `personalize -o same.npz`): the second to finish is refused
    and the first one's output stays whole; nothing of ours is left beside it."""
    target = tmp_path / ("u.npz" if make == "file" else "bundle")
    ctx = atomic_file if make == "file" else atomic_dir
    with pytest.raises(OutputExistsError, match="appeared while this command ran"):
        with ctx(target, overwrite=False) as tmp:
            (tmp.write_text("mine") if make == "file" else (tmp / "x").write_text("mine"))
            (target.write_text("theirs") if make == "file" else (target.mkdir(), (target / "x").write_text("theirs")))
    kept = target if make == "file" else target / "x"
    assert kept.read_text() == "theirs" and sorted(os.listdir(tmp_path)) == [target.name]


def test_personalize_style_race_through_write_user(tmp_path, monkeypatch):
    """write_user itself (what personalize / train / project call) under the race: refused, the first file kept."""
    from edge_lorax.formats import user as user_mod

    target, theirs = tmp_path / "same.npz", write_user(user(7.0), tmp_path / "theirs.npz").read_bytes()
    (tmp_path / "theirs.npz").unlink()
    real = user_mod._write_member

    def racing(zf, name, arr):
        if not target.exists():
            target.write_bytes(theirs)  # the other process finishes first
        real(zf, name, arr)

    monkeypatch.setattr(user_mod, "_write_member", racing)
    with pytest.raises(OutputExistsError):
        write_user(user(8.0), target, overwrite=False)
    monkeypatch.undo()
    assert read_user(target).coefficients[A][0, 0] == 7.0 and sorted(os.listdir(tmp_path)) == ["same.npz"]


def test_project_many_with_no_adapter_projected_writes_nothing(tmp_path):
    """Every adapter failed: exit 1, one line naming the first failure, no output folder (a rerun needs no
    --overwrite)."""
    from helpers.tiny import tiny_adapters, tiny_model

    adapters = tiny_adapters(tiny_model("bert", tmp_path / "m"), "bert", tmp_path / "a", n=2)
    sub = tmp_path / "sub"
    assert CliRunner().invoke(cli, ["build", *map(str, adapters[:2]), "-k", "2", "-o", str(sub)]).exit_code == 0
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps([]))
    res = CliRunner().invoke(cli, ["project-many", str(sub), str(bad), str(tmp_path / "missing"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no adapter could be projected (2 failed)" in res.output and str(bad) in res.output
    assert not (tmp_path / "o").exists() and "Traceback" not in res.output
