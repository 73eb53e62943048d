"""The demo's source adapters: the checkout's by default, any folder by --adapters (an installed wheel has no checkout)."""

import shutil

import pytest
from click.testing import CliRunner

from edge_lorax.cli import cli
from edge_lorax.demo import CHECKOUT_ADAPTERS, SOURCES
from edge_lorax.formats.errors import MissingInputError


def test_checkout_adapters_are_complete():
    from edge_lorax.demo import _source_adapters

    assert _source_adapters() == CHECKOUT_ADAPTERS


def test_a_copied_adapter_folder_is_taken_and_an_incomplete_one_refused(tmp_path):
    from edge_lorax.demo import _source_adapters

    for name in (*SOURCES, "nyt-binary"):
        shutil.copytree(CHECKOUT_ADAPTERS / name, tmp_path / "adapters" / name)
    assert _source_adapters(tmp_path / "adapters") == tmp_path / "adapters"
    shutil.rmtree(tmp_path / "adapters" / "nyt-binary")
    with pytest.raises(MissingInputError, match=r"no source adapter nyt-binary \(1 missing\); pass --adapters"):
        _source_adapters(tmp_path / "adapters")


def test_cli_demo_refuses_an_incomplete_adapters_folder_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "out"), "--adapters", str(tmp_path / "empty")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "--adapters" in res.output, res.output
    assert not (tmp_path / "out").exists()
