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


def test_adapter_folders_are_peft_folders_in_float16(tmp_path):
    """The generated folders are formats.peft.write_adapter folders (float16 on disk, scaling 1)."""
    import numpy as np
    from safetensors import safe_open

    from edge_lorax.formats.names import ADAPTER_WEIGHTS
    from edge_lorax.formats.peft import read_adapter

    scale = runpy.run_path(str(SCRIPT))
    scale["write_adapter_folder"](tmp_path / "a", np.random.default_rng(0), layers=2, dim=16, rank=4)
    info = read_adapter(tmp_path / "a")
    assert info.modules == tuple(sorted(scale["module_names"](2))) and set(info.ranks.values()) == {4}
    assert set(info.scalings.values()) == {1.0} and set(info.shapes.values()) == {(16, 16)}
    with safe_open(tmp_path / "a" / ADAPTER_WEIGHTS, framework="numpy") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_report_carries_the_shared_stamp(tmp_path):
    from edge_lorax.bench import measure

    scale = runpy.run_path(str(SCRIPT))
    st = measure.finish(measure.stamp("build_scale.py --n 50", scale["VERSIONS"], scale["CODE"]))
    report = {"stamp": st, "blas_threads_env": {}, "generation_s": 1.0, "notes": ["a note"],
              "setup": {"layers": 32, "targets": ["q_proj", "v_proj"], "modules": 64, "dim": 4096, "rank": 16,
                        "dtype": "float16", "components": 32, "blas_threads": 1, "bytes_per_adapter": 2**24},
              "results": [dict(r, subspace_bytes=2**26) for r in _results({50: 75, 100: 199})],
              "verdict": scale["verdict"](_results({50: 75, 100: 199}))}
    md = scale["markdown"](report)
    assert f"- git commit: `{st['git_commit']}`" in md and "build_scale.py --n 50" in md and "- a note" in md
    assert st["dirty_scope"] == list(scale["CODE"]) and st["versions"]["safetensors"] != "not installed"
