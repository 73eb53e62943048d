"""The encoder bench's report.png draws what its verdicts judge (issue 26 item 5): the paired panel plots each
verdict's ratio on the time that verdict uses (the thread's CPU time on a busy machine, not wall), with its spread,
the ±3% band and valid / INVALID cells; quick mode's single sequence length is bars with p90 / p99, not a column of
dots; resident-user memory is on a linear axis (0.00 MiB is a value); the busy-machine warning is in the figure.
Synthetic report data only: no model, no worker process."""

import numpy as np
import pytest

from edge_lorax.bench import report
from edge_lorax.bench.prepare import ANCHOR, EIGEN, INT8, MERGED, PLAIN
from edge_lorax.bench.run import SWEEP_MODELS

AA = report.AA_COPY
ROUNDS = 16


def _row(wall: dict, cpu: dict, control: float = 1.0, seq: int = 64, seed: int = 0) -> dict:
    """A paired row, 1 thread, judged on CPU time: block medians = base x ratio over plain x noise, wall and CPU apart."""
    rng = np.random.default_rng(seed)
    base = {"": 14.0, INT8: 6.0}

    def medians(ratios):
        out = {}
        for label in (*SWEEP_MODELS, AA):
            ratio = control if label == AA else ratios.get(label, 1.0)
            out[label] = list(base[INT8 if label.endswith(INT8) else ""] * ratio * (1 + 0.01 * rng.standard_normal(ROUNDS)))
        return out

    return {"threads": 1, "batch": 1, "seq": seq, "block_medians_ms": medians(wall), "block_cpu_ms": medians(cpu),
            "per_block": 17, "metric": report.CPU}


def _latency(seqs, load: float = 0.1) -> list:
    """p50 grows with seq; EigenLoRAx's p90 / p99 far above its p50 (a noisy quick run)."""
    rows = []
    for model in (PLAIN, EIGEN):
        for seq in seqs:
            p50 = seq / 4 * (0.5 if model == EIGEN else 1.0)
            rows.append({"model": model, "threads": 1, "batch": 1, "seq": seq,
                         "stats": {"p50": p50, "p90": p50 * (4 if model == EIGEN else 1.1), "p99": p50 * 5, "n": 5,
                                   "mean": p50, "min": p50}})
    return rows


def _data(rows: list, load: float = 0.1, quick: bool = False, seqs=(16, 64)) -> dict:
    machine = {"load_average": [load, load, load], "cpu": "test CPU"}
    memory = [{"users_kind": k, "users": n, "delta_anon_mib": d, "tensor_bytes": n * b}
              for k, b, ds in (("eigenlorax coefficients", 1000, (0.0, 0.0, 1.25)), ("lora A/B", 30000, (0.0, 2.9, 29.0)))
              for n, d in zip((1, 10, 100), ds)]
    return {"stamp": {"machine": machine, "load_average_end": [load], "git_commit": "0" * 40}, "paired": rows,
            "plan": {"user_counts": [1, 10, 100]}, "quick": quick, "latency": _latency(seqs), "memory": memory}


# the report: the picture read −18.6 % / +37.7 % (wall) where the verdicts judged ×1.007 / ×1.113 (CPU)
WALL = {EIGEN: 0.814, ANCHOR: 1.0, EIGEN + INT8: 1.377, ANCHOR + INT8: 1.0}
CPU = {EIGEN: 1.007, ANCHOR: 1.0, EIGEN + INT8: 1.113, ANCHOR + INT8: 1.0, MERGED: 1.01}


def test_paired_series_are_the_cpu_ratios_the_verdicts_judge_with_their_spread():
    data = _data([_row(WALL, CPU)], load=2.0)
    (cell,) = report.paired_series(data)
    assert cell["metric"] == report.CPU and cell["time"] == "thread CPU time" and cell["valid"]
    bars = {b["label"]: b for b in cell["bars"]}
    targets = report.target_overheads(data)
    for label, (num, den), target in zip(("EigenLoRAx / anchor, fp32", "EigenLoRAx / anchor, int8", "merged / plain"),
                                         ((EIGEN, ANCHOR), (EIGEN + INT8, ANCHOR + INT8), (MERGED, PLAIN)), targets):
        t = report.tie(data["paired"][0], num, den, report.CPU)
        assert bars[label]["ratio"] == t["ratio"] and bars[label]["spread"] == t["spread"] > 0
        assert bars[label]["band"] == report.TIE_BAND and bars[label]["ok"] == (target["status"] == "PASS")
        assert f"×{t['ratio']:.3f}" in target["measured"]  # the number the verdict prints is the one drawn
    assert bars["EigenLoRAx / anchor, fp32"]["ratio"] == pytest.approx(1.007, abs=0.01)  # not the wall 0.814
    assert bars["EigenLoRAx / anchor, int8"]["ratio"] == pytest.approx(1.113, abs=0.015)  # not the wall 1.377
    assert bars["A/A control"]["band"] == report.AA_LIMIT and bars["A/A control"]["ok"]


def test_the_paired_panel_draws_the_band_and_marks_an_invalid_cell():
    data = _data([_row(CPU, CPU), _row(CPU, CPU, control=0.83, seq=16, seed=1)])
    valid, invalid = report.paired_series(data)
    assert valid["valid"] and not invalid["valid"] and valid["metric"] == report.CPU
    ax = report.figure(data).axes[1]
    band = [p for p in ax.patches if p.get_label() == "±3% band"]
    assert len(band) == 1
    ys = band[0].get_path().transformed(band[0].get_patch_transform()).vertices[:, 1]
    assert (min(ys), max(ys)) == pytest.approx((-3.0, 3.0))  # drawn in % of the ratio − 1
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("INVALID" in t and "seq 16" in t for t in legend) and any("thread CPU time" in t for t in legend)
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if p.get_label() != "±3% band" and p.get_hatch() is None)
    assert round(100 * (valid["bars"][0]["ratio"] - 1), 6) in heights  # the valid cell's first bar, at its ratio
    assert [p for p in ax.patches if p.get_hatch() == "//"]  # the invalid cell's bars, hatched


def test_quick_latency_is_bars_with_spread_not_a_column_of_dots():
    data = _data([_row(CPU, CPU)], quick=True, seqs=(16,))
    s = report.latency_series(data)
    assert s["bars"] and s["seqs"] == [16]
    eig = next(x for x in s["series"] if x["model"] == EIGEN)
    assert eig["p50"] == [2.0] and eig["p90"] == [8.0] and eig["p99"] == [10.0]  # the spread shown, not only p50
    fig = report.figure(data)
    ax = fig.axes[0]
    assert len(ax.patches) == len(s["series"]) and ax.get_xscale() == "linear"
    assert "quick mode" in fig._suptitle.get_text()
    assert not report.latency_series(_data([], seqs=(16, 64)))["bars"]  # several lengths: lines


def test_memory_is_on_a_linear_axis_with_zeros_as_measured():
    data = _data([_row(CPU, CPU)])
    s = report.memory_series(data)
    assert s["yscale"] == "linear" and s["series"]["eigenlorax coefficients"]["delta_anon_mib"] == [0.0, 0.0, 1.25]
    ax = report.figure(data).axes[2]
    assert ax.get_yscale() == "linear"
    assert [0.0, 0.0, 1.25] in [list(line.get_ydata()) for line in ax.get_lines()]  # not clipped to 1e-3


@pytest.mark.parametrize("load, shown", [(2.0, True), (0.1, False)])
def test_the_busy_warning_is_on_the_picture(load, shown):
    data = _data([_row(CPU, CPU)], load=load)
    assert report.busy(data) is shown
    assert ("machine was busy" in report.figure(data)._suptitle.get_text()) is shown
