"""build_scale's verdict: linear means a constant CPU cost per 512-row streaming update, and flat RSS within 10 %."""

import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "build_scale.py"


def _results(cpu_by_n: dict, rss=(300, 300, 300)) -> list:
    return [{"n": n, "wall_s": c, "user_cpu_s": c, "sys_cpu_s": 0.0, "peak_rss_mib": m}
            for (n, c), m in zip(cpu_by_n.items(), rss)]


def test_verdict_counts_streaming_updates():
    scale = runpy.run_path(str(SCRIPT))
    assert [scale["updates"](n, 16) for n in (32, 33, 50, 100, 200)] == [0, 1, 1, 3, 6]
    v = scale["verdict"](_results({50: 15 + 60, 100: 15 + 180, 200: 15 + 360}))  # 60 s per update
    assert v["marginal_cpu_seconds_per_update"] == [60.0, 60.0] and v["time_roughly_linear"]
    assert v["peak_rss_flat_within_10pct"]
    v = scale["verdict"](_results({50: 60, 100: 180, 200: 900}, rss=(300, 300, 400)))  # quadratic-ish, RSS grows
    assert not v["time_roughly_linear"] and not v["peak_rss_flat_within_10pct"]
