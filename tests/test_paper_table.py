"""The paper-table benchmark's --quick mode runs every method end to end on the committed adapters and resumes."""

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "paper_table"))

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    import run as paper

    out = tmp_path_factory.mktemp("paper")
    paper.main(["--quick", "--out", str(out)])
    return paper, out


def test_quick_runs_every_method_with_measurements(quick_runs):
    paper, out = quick_runs
    results = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(results) == set(paper.TRAINED) | {"projection-drop"}
    for method in paper.TRAINED:
        r = results[method]
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["steps"] == 4 and r["s_per_step"] > 0 and r["user_bytes"] > 0
    assert results["eigen-drop"]["adapter_params"] == 12 * 2 * 8 * 8  # 12 modules x (coeff_A + coeff_B), K = r = 8
    assert results["random"]["adapter_params"] == results["eigen-drop"]["adapter_params"]
    assert results["lora"]["adapter_params"] == 12 * 8 * (384 + 384)
    assert results["head"]["adapter_params"] == 0 and results["head"]["head_params"] == 384 * 2 + 2
    assert 0.0 < results["projection-drop"]["relative_error"] < 1.0


def test_quick_resumes_from_cache_and_reports(quick_runs, tmp_path):
    paper, out = quick_runs
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    paper.main(["--quick", "--out", str(out)])  # every run cached: nothing retrained, files untouched
    assert {p.name: p.read_bytes() for p in out.glob("*.json")} == before
    report = runpy.run_path(str(ROOT / "benchmarks" / "paper_table" / "report.py"))
    report["main"](["--runs", str(out)])
    stem = out.parent / out.name.replace("runs", "report")
    assert "## Cost per method" in stem.with_suffix(".md").read_text()
    verdicts = report["verdicts"](report["load_runs"](out))
    assert set(verdicts) >= {"eigen_within_1pt_of_lora", "eigen_beats_head_by_2pt", "best_mean_setting"}
