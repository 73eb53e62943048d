"""`edge-lorax bench` on a decoder bundle (issue 26 item 4): the tiny decoder bundle (helpers.decoder) benched with
--quick against onnxruntime-genai's plain build of its base model, made from --model; the report (JSON + Markdown +
PNG, stamped) has time to first token and decode tokens/s for ours and plain, switch cost and resident users'
memory, and its picture draws the ratios its verdicts judge. Without a resolvable base model the report says it has
no plain row and why; options that do not fit the bundle, or the other kind of bundle, are refused in one line.
~25 s on top of the shared decoder bundle (one model builder run, four worker processes)."""

import json
import shutil

import pytest
from click.testing import CliRunner

from edge_lorax.bench import llm_report
from edge_lorax.cli import cli

pytest.importorskip("onnxruntime_genai")


def bench(*args):
    return CliRunner().invoke(cli, ["bench", *map(str, args)])


@pytest.fixture(scope="module")
def report(decoder_bundle, tmp_path_factory):
    root, model = decoder_bundle
    out = tmp_path_factory.mktemp("bench-llm") / "report"
    res = bench(root / "bundle", "-o", out, "--quick", "--model", model)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, json.loads((out / "report.json").read_text())


def test_rows_have_ttft_and_decode_for_ours_and_plain(report):
    out, data = report
    assert set(data["runs"]) == {"ours_t1", "plain_t1"} and data["plan"]["prompt_tokens"] == [32]
    for key in ("ours_t1", "plain_t1"):
        (run,) = data["runs"][key]  # quick: one round
        assert "error" not in run, run
        assert run["ttft_ms"]["32"] > 0 and len(run["ttft_ms_reps"]["32"]) == data["plan"]["reps"]
        assert run["decode_tokens_per_s"] > 0 and run["memory_mib"]["VmHWM"] > 0
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith(("| ours | 1 |", "| plain | 1 |"))]
    assert len(rows) == 2 and all("—" not in r and "failed" not in r for r in rows), rows
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_switch_cost_and_resident_users_of_the_bundle(report):
    _, data = report
    (ours,), (plain,) = data["runs"]["ours_t1"], data["runs"]["plain_t1"]
    sw = ours["switch"]
    assert sw["preloaded_us"] > 0 and sw["from_onnx_adapter_us"] > sw["preloaded_us"] and sw["from_user_npz_us"] > 0
    res = ours["resident"]
    assert res["users"] == data["plan"]["users"] == 20 and res["bytes_per_user_file"] > 0 and "rss_mib" in res
    assert "switch" not in plain and "resident" not in plain  # a plain build has no users
    md = (report[0] / "report.md").read_text()
    assert "set_active_adapter" in md and "20 resident users" in md


def test_report_is_stamped_and_judged_against_the_plain_build(report):
    _, data = report
    st = data["stamp"]
    assert st["command"].startswith("edge-lorax bench ") and "--quick" in st["command"] and "--model" in st["command"]
    assert (len(st["git_commit"]) >= 40 or st["git_commit"] == "unknown") and st["machine"]["cpu"]
    assert data["kind"] == "genai-decoder" and data["precision"] == "fp32" and data["plain_build_s"] > 0
    statuses = [t["status"] for t in data["targets"]]
    assert len(statuses) == 2 and set(statuses) <= {"PASS", "MISS"}, data["targets"]


def test_the_picture_plots_the_ratios_the_verdicts_judge(report):
    _, data = report
    series = llm_report.plot_series(data)
    (row,) = llm_report.ratios(data)
    (ours,), (plain,) = data["runs"]["ours_t1"], data["runs"]["plain_t1"]
    ttft, decode = series["ratios"]
    assert ttft["ratio"] == pytest.approx(ours["ttft_ms"]["32"] / plain["ttft_ms"]["32"]) == row["ttft"]["32"]["ratio"]
    assert decode["ratio"] == pytest.approx(ours["decode_tokens_per_s"] / plain["decode_tokens_per_s"])
    judged = {t["target"].split(" ")[0]: t["measured"] for t in data["targets"]}
    assert f"×{decode['ratio']:.3f}" in judged["decode"] and f"×{ttft['ratio']:.3f}" in judged["time"]
    assert (ttft["target"], ttft["at_most"], decode["target"], decode["at_most"]) == (1.15, True, 0.85, False)
    b = series["builds"][0]["ttft"]["32"]
    assert b["lo"] <= b["median"] <= b["hi"]  # the spread drawn: every repetition's range
    fig = llm_report.figure({**data, "stamp": {**data["stamp"], "load_average_end": [3.0]}})
    assert "machine was busy" in fig._suptitle.get_text() and "quick mode" in fig._suptitle.get_text()
    assert all(ax.get_yscale() == "linear" for ax in fig.axes)


def test_without_a_base_model_folder_the_report_says_it_has_no_plain_row(decoder_bundle, tmp_path):
    root, _ = decoder_bundle  # the manifest's base_model "tiny-llama" is a folder name, not resolvable from here
    res = bench(root / "bundle", "-o", tmp_path / "r", "--quick", "--users", 3)
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(data["runs"]) == {"ours_t1"} and data["runs"]["ours_t1"][0]["resident"]["users"] == 3
    assert {t["status"] for t in data["targets"]} == {"not measured"}
    why = data["targets"][0]["why"]
    assert why.startswith("no plain row") and "'tiny-llama'" in why and "--model" in why
    assert "no plain row" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("args, says", [
    (["--prompt-tokens", "64"], "--prompt-tokens 64: the bundle's context is 64 tokens"),
    (["--new-tokens", "40"], "--new-tokens 40 after a 32-token prompt exceeds the bundle's context of 64"),
    (["--threads", "1,999"], "--threads 1,999: this machine has"),
    (["--threads", "one"], "--threads 'one': give whole numbers"),
    (["--users", "0"], "--users 0: give whole numbers >= 1"),
    (["--subspace", "SUB"], "--subspace: encoder bundles only"),
])
def test_decoder_options_that_do_not_fit_are_refused_in_one_line(decoder_bundle, tmp_path, args, says):
    root, _ = decoder_bundle
    args = [str(root / "sub") if a == "SUB" else a for a in args]
    res = bench(root / "bundle", "-o", tmp_path / "r", "--quick", *args)
    assert res.exit_code == 1 and says in res.output and not (tmp_path / "r").exists(), res.output


def test_a_model_other_than_the_bundles_base_is_refused(decoder_bundle, tmp_path):
    root, model = decoder_bundle
    other = shutil.copytree(model, tmp_path / "another-llama")
    res = bench(root / "bundle", "-o", tmp_path / "r", "--quick", "--model", other)
    assert res.exit_code == 1 and "'another-llama', but" in res.output and "'tiny-llama'" in res.output, res.output


def test_an_encoder_bundle_refuses_decoder_options_and_still_needs_its_subspace(tmp_path_factory, tmp_path):
    from helpers.runtime import get_setup

    setup = get_setup(tmp_path_factory)
    res = bench(setup.bundle, "-o", tmp_path / "r", "--subspace", setup.subspace_dir, "--threads", "1")
    assert res.exit_code == 1 and "--threads: decoder bundles only" in res.output, res.output
    res = bench(setup.bundle, "-o", tmp_path / "r", "--quick")
    assert res.exit_code == 2 and "--subspace" in res.output and not (tmp_path / "r").exists(), res.output
