"""`edge-lorax bench --quick` on a tiny exporter-written bundle: every section measured in fresh processes, the
report stamped and written as JSON + Markdown + PNG, targets judged, nothing made up."""

import json
import time

import pytest
from click.testing import CliRunner

from edge_lorax.bench.prepare import ANCHOR, EIGEN, INT8, MERGED
from edge_lorax.bench.run import OPTIONAL_MODELS, SWEEP_MODELS
from edge_lorax.cli import cli
from helpers.runtime import get_setup


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    setup = get_setup(tmp_path_factory)
    out = tmp_path_factory.mktemp("bench") / "report"
    t0 = time.perf_counter()
    res = CliRunner().invoke(cli, ["bench", str(setup.bundle), "-o", str(out), "--subspace", str(setup.subspace_dir),
                                   "--model", str(setup.model), "--coeffs", str(setup.users[1]), "--quick"])
    elapsed = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "report.json").read_text()), elapsed


def test_quick_mode_is_quick(report):
    assert report[2] < 90  # < 60 s on an idle 2-core machine; headroom for a shared one


def test_report_files_and_stamp(report):
    out, data, _ = report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "## Targets (runtime overhead and optimum parity)" in md and data["stamp"]["command"] in md
    assert "issue " not in md.lower().replace("not the issue here", "")  # no internal issue numbers
    st = data["stamp"]
    assert st["command"].startswith("edge-lorax bench ") and st["command"].endswith("--quick")
    assert len(st["git_commit"]) >= 40 or st["git_commit"] == "unknown"
    assert st["machine"]["cpu"] and st["machine"]["usable_cores"] >= 1 and st["machine"]["ram_gib"] > 0
    assert st["versions"]["onnxruntime"] != "not installed" and data["quick"] is True


def test_latency_rows_fresh_process_each(report):
    rows = report[1]["latency"]
    measured = [r["model"] for r in rows]
    assert set(SWEEP_MODELS) <= set(measured) <= set(SWEEP_MODELS + OPTIONAL_MODELS) and len(set(measured)) == len(rows)
    notes = report[1]["prepared"]["notes"]  # an optional row absent is a note saying why (e.g. no optimum-cli)
    assert all(any(m.split()[0] in n or "optimum" in n for n in notes) for m in set(OPTIONAL_MODELS) - set(measured))
    for r in rows:
        assert "error" not in r, r
        s, mem = r["stats"], r["memory"]["end"]
        assert s["n"] >= 5 and 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"]
        assert mem["VmHWM"] >= mem["VmRSS"] * 0.5 and mem["RssAnon"] > 0 and mem["RssFile"] > 0


def test_paired_switch_memory_torch(report):
    data = report[1]
    paired = data["paired"][0]
    measured = {r["model"] for r in data["latency"]}
    assert set(paired["block_medians_ms"]) == measured | {"plain (A/A copy)"}
    assert all(len(v) == data["plan"]["paired_rounds"] for v in paired["block_medians_ms"].values())
    sw = data["switch"]
    assert "error" not in sw, sw
    assert sw["rebind_preloaded"]["bind"]["p50_us"] > 0 and sw["adapter_lora"]["activate_preloaded"]["p50_us"] > 0
    assert sw["load_user_npz"]["p50_us"] > 0 and sw["load_user_adapter"]["p50_us"] > 0
    assert sw["new_merged_session"]["create_ms"] > 0
    runs = sw["rebind_preloaded"]["runs"]
    assert set(runs) == {"same", "rebind", "adapter", "defaults"} and all(r["cpu"]["p50"] > 0 for r in runs.values())
    mem = {(r["users_kind"], r["users"]): r for r in data["memory"]}
    assert len(mem) == 2 * len(data["plan"]["user_counts"])
    assert mem[("lora A/B", 100)]["tensor_bytes"] > mem[("eigenlorax coefficients", 100)]["tensor_bytes"]
    cpu = [r for r in data["torch"] if r["device"] == "cpu"]
    assert cpu and all(r["available"] and r["stats"]["p50"] > 0 for r in cpu)
    import torch

    cuda = [r for r in data["torch"] if r["device"] == "cuda"]
    if not torch.cuda.is_available():
        assert cuda and all(r["available"] is False and "not available" in r["reason"] for r in cuda)


def test_parity_and_targets(report):
    data = report[1]
    parity = data["prepared"]["parity"]
    for label in (EIGEN, ANCHOR, MERGED):
        assert parity[label] <= 1e-4, (label, parity)
    for label in (EIGEN + INT8, ANCHOR + INT8):
        assert parity[label] <= 0.25
    sizes = data["prepared"]["user_bytes"]
    assert sizes["eigen_tensors"] * 8 == sizes["lora_tensors"]  # per module 2·K·r = 16 numbers vs r·(in+out) = 128
    targets = data["targets"]
    assert len(targets) >= 7
    for t in targets:
        assert t["status"] in ("PASS", "MISS", "INVALID", "not measured")
        assert t["status"] == "PASS" or t["why"], t


def test_paired_cells_carry_their_control_and_attempts(report):
    from edge_lorax.bench.report import AA_LIMIT, control

    data = report[1]
    for row in data["paired"]:
        attempts = row["attempts"]
        assert 1 <= len(attempts) <= 1 + data["plan"]["paired_retries"] and row["metric"] in row
        assert attempts[-1]["control"] == control(row, row["metric"]) and row["per_block"] >= 3
        assert all(abs(a["control"] - 1) > AA_LIMIT for a in attempts[:-1])  # re-measured only while off
    invalid = [t for t in data["targets"] if t["status"] == "INVALID"]
    assert all("A/A control" in t["why"] for t in invalid)


def test_another_subspace_or_a_user_of_other_labels_is_refused_by_name(tmp_path_factory, tmp_path):
    from edge_lorax.formats.subspace import write_subspace
    from helpers.runtime import save_user, tiny_subspace

    setup = get_setup(tmp_path_factory)
    other = write_subspace(tiny_subspace(seed=1), tmp_path / "other")
    three = save_user(setup.subspace, 5, tmp_path / "three.npz", labels=3)
    for args, named in ((["--subspace", str(other)], f"{other}: subspace"),
                        (["--subspace", str(setup.subspace_dir), "--coeffs", str(three)], f"{three}: head.bias has shape (3,)")):
        res = CliRunner().invoke(cli, ["bench", str(setup.bundle), "-o", str(tmp_path / "r"), "--model",
                                       str(setup.model), "--quick", *args])
        assert res.exit_code == 1 and named in res.output and not (tmp_path / "r").exists(), res.output
