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
    assert set(results) == set(paper.TRAINED) | {"projection-drop", "probe"}
    for method in paper.TRAINED:
        r = results[method]
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["steps"] == 4 and r["s_per_step"] > 0 and r["user_bytes"] > 0
    assert results["eigen-drop"]["adapter_params"] == 12 * 2 * 8 * 8  # 12 modules x (coeff_A + coeff_B), K = r = 8
    assert results["random"]["adapter_params"] == results["eigen-drop"]["adapter_params"]
    assert results["lora"]["adapter_params"] == 12 * 8 * (384 + 384)
    assert results["head"]["adapter_params"] == 0 and results["head"]["head_params"] == 384 * 2 + 2
    assert 0.0 < results["projection-drop"]["relative_error"] < 1.0
    probe = results["probe"]
    assert probe["c"] in probe["c_grid"] and probe["head_params"] == 384 * 2 + 2 and probe["steps"] == 0
    assert probe["validation_accuracy"] == max(g["validation_accuracy"] for g in probe["probe_grid"] if g["converged"])
    for method in paper.TRAINED:  # validation accuracy of the final weights, and the rate, recorded per run
        assert 0.0 <= results[method]["validation_accuracy"] <= 1.0
        assert results[method]["config"]["lr"] == paper.LEGACY_LR[method] and results[method]["cpu_s"] > 0


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
    assert verdicts["defaults"] == {"build --mean": "keep", "train --init": "zero_b"}  # read from the CLI itself
    assert [c["winner"] for c in verdicts["mean_keep_vs_drop"].values()] == ["unknown"]  # one pair: nothing claimed
    assert verdicts["evidence_picks"] == {"build --mean": "drop", "train --init": "zero_b"}  # ties: the fallbacks


def _record(method, domain, seed, acc, init="zero_b", rows="all", grid="main"):
    return {"method": method, "domain": domain, "seed": seed, "test_accuracy": acc, "init": init, "rows": rows,
            "grid": grid, "k": 8, "augment": 0, "adapter_params": 1536 if method.startswith("eigen") else 73728}


def test_verdicts_judge_paired_differences():
    report = runpy.run_path(str(ROOT / "benchmarks" / "paper_table" / "report.py"))
    runs = []
    for i, (domain, seed) in enumerate((d, s) for d in ("amazon", "nyt") for s in range(3)):
        runs += [_record("lora", domain, seed, 0.80 + 0.01 * i), _record("eigen-drop", domain, seed, 0.795 + 0.01 * i),
                 _record("eigen-keep", domain, seed, 0.80 + 0.01 * i + (0.01 if seed == 0 else -0.01)),
                 _record("head", domain, seed, 0.60)]
    v = report["verdicts"](runs)
    drop_vs_lora = v["eigen_vs_lora"]["eigen-drop"]["all"]
    assert drop_vs_lora["n"] == 6 and drop_vs_lora["mean_diff"] == -0.5 and drop_vs_lora["winner"] == "b"
    assert v["eigen_drop_within_1pt_of_lora_main"] and v["adapter_param_ratio_vs_lora"] == round(1536 / 73728, 4)
    assert v["eigen_drop_vs_head"]["all"]["winner"] == "a" and v["eigen_drop_vs_head"]["all"]["mean_diff"] > 19
    assert v["mean_keep_vs_drop"]["all"]["winner"] == "tie" and v["evidence_picks"]["build --mean"] == "drop"
    small = [_record(m, d, s, acc + (0.01 if m == "eigen-keep" else 0), rows="64", grid="lowdata")
             for d in ("amazon", "nyt") for s in range(3) for m, acc in (("eigen-keep", 0.7), ("eigen-drop", 0.7))]
    picked = report["verdicts"](runs + small)  # keep wins at 64 rows, ties with all rows
    assert picked["mean_keep_vs_drop"]["64"]["winner"] == "a" and picked["evidence_picks"]["build --mean"] == "keep"
    runs = [dict(r, test_accuracy=r["test_accuracy"] - 0.02) if r["method"] == "eigen-drop" else r for r in runs]
    assert not report["verdicts"](runs)["eigen_drop_within_1pt_of_lora_main"]  # 2.5 points behind LoRA


def test_sweep_picks_the_best_mean_validation_rate():
    report = runpy.run_path(str(ROOT / "benchmarks" / "paper_table" / "report.py"))
    sweep = {"lora": (5e-4, 2e-3), "head": (5e-3, 2e-1)}
    val = {("lora", 5e-4): (0.70, 0.80), ("lora", 2e-3): (0.78, 0.77), ("head", 5e-3): (0.6, 0.6), ("head", 2e-1): (0.7, 0.7)}
    runs = [dict(_record(m, d, 0, 0.5), lr=lr, validation_accuracy=v[i])
            for (m, lr), v in val.items() for i, d in enumerate(("amazon", "nyt"))]
    scores = report["sweep_scores"](runs, sweep)
    assert scores["lora"] == {5e-4: pytest.approx(0.75), 2e-3: pytest.approx(0.775)}
    assert report["pick_lrs"](runs, sweep) == {"lora": 2e-3, "head": 2e-1}
    seed1 = [dict(r, seed=1, validation_accuracy=1.0) for r in runs if r["lr"] == 5e-4]  # only seed 0 counts
    assert report["pick_lrs"](runs + seed1, sweep) == {"lora": 2e-3, "head": 2e-1}
    lora = lambda d, lr, v: dict(_record("lora", d, 0, 0.5), lr=lr, validation_accuracy=v)  # noqa: E731
    float_tie = [lora("amazon", 5e-4, 0.1), lora("nyt", 5e-4, 0.7), lora("amazon", 2e-3, 0.3), lora("nyt", 2e-3, 0.5)]
    assert 0.1 + 0.7 < 0.3 + 0.5  # the same 0.8 in exact arithmetic, not in floats
    assert report["pick_lrs"](float_tie, {"lora": (5e-4, 2e-3)}) == {"lora": 5e-4}  # a tie: the smaller rate
    assert report["pick_lrs"](float_tie, {"lora": (2e-3, 5e-4)}) == {"lora": 5e-4}  # whatever the listed order
    legacy = [lora("amazon", 5e-4, 0.945312), lora("amazon", 2e-3, 0.9453125)]  # 121/128 stored to 6 decimals, exact
    assert report["pick_lrs"](legacy, {"lora": (5e-4, 2e-3)}) == {"lora": 5e-4}
    incomplete = [r for r in runs if not (r["method"] == "head" and r["lr"] == 2e-1 and r["domain"] == "nyt")]
    assert report["pick_lrs"](incomplete, sweep) == {"lora": 2e-3}  # no pick until every domain has its run


def test_legacy_files_are_reused_only_at_their_rate(tmp_path):
    import run as paper

    old = paper.Run("amazon", "lora", "all", 0)
    (tmp_path / f"{old.key}.json").write_text(json.dumps({"config": {"lr": 2e-3}, "test_accuracy": 0.8}))
    assert paper.cached(paper.Run("amazon", "lora", "all", 0, lr=2e-3), tmp_path) == tmp_path / f"{old.key}.json"
    new = paper.Run("amazon", "lora", "all", 0, lr=5e-3)
    assert paper.cached(new, tmp_path) is None and new.key == old.key + "_lr0.005"
    (tmp_path / f"{new.key}.json").write_text("{}")
    assert paper.cached(new, tmp_path) == tmp_path / f"{new.key}.json"
