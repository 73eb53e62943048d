"""The arm64 check's decoder probe (benchmarks/arm64/probe.py) resumes an interrupted task-row run: an emulated 200-row
run takes hours, so it checkpoints every 25 rows and a rerun keeps the saved rows and computes only the rest. Run here
on x86 on the tiny decoder bundle (helpers.decoder); ~10 s on top of the shared bundle."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai")
PROBE = Path(__file__).resolve().parents[1] / "benchmarks" / "arm64" / "probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("arm64_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(path: Path, rows: int = 30) -> Path:
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.integers(3, 77, 6)) for _ in range(rows)]
    path.write_text(json.dumps({"prompts": ["w5 w6 w7"], "max_new_tokens": 4, "labels": ["w10", "w11"],
                                "texts": texts, "targets": [int(t) for t in rng.integers(0, 2, rows)]}))
    return path


def test_a_rerun_keeps_the_checkpointed_rows_and_computes_the_rest(probe, decoder_bundle, tmp_path):
    root, _ = decoder_bundle
    inputs = _inputs(tmp_path / "inputs.json")
    args = [root / "bundle", root / "u3.npz", inputs]
    assert probe.main([*args, tmp_path / "full.npz"]) == 0
    full = dict(np.load(tmp_path / "full.npz"))
    assert len([k for k in full if k.startswith("task_tokens_")]) == 30 and full["task_exact"].shape == (30,)
    assert not (tmp_path / "full.rows.npz").exists()  # the checkpoint is folded into OUT

    # an interrupted run's checkpoint after 25 rows, row 0 marked so a recomputation would show
    saved = {k: v for k, v in full.items() if k.startswith("prompt_") or k in {f"task_tokens_{i}" for i in range(25)}}
    saved["task_tokens_0"] = np.array([9, 9, 9], np.int64)
    np.savez(tmp_path / "resumed.rows.npz", **saved, seconds_spent=np.array(100.0))
    assert probe.main([*args, tmp_path / "resumed.npz"]) == 0
    resumed = dict(np.load(tmp_path / "resumed.npz"))
    np.testing.assert_array_equal(resumed["task_tokens_0"], [9, 9, 9])  # kept, not recomputed
    for i in range(1, 30):  # rows 25-29 computed now, equal to the uninterrupted run
        np.testing.assert_array_equal(resumed[f"task_tokens_{i}"], full[f"task_tokens_{i}"])
    assert resumed["task_exact"][0] == 0 and (resumed["task_exact"][1:] == full["task_exact"][1:]).all()
    assert float(resumed["seconds"]) >= 100.0  # the interrupted run's seconds count


def test_the_probe_checkpoints_every_25_rows(probe, decoder_bundle, tmp_path):
    root, _ = decoder_bundle
    inputs = json.loads(_inputs(tmp_path / "inputs.json").read_text())
    out = probe.decoder(root / "bundle", root / "u3.npz", inputs, tmp_path / "x.rows.npz")
    saved = dict(np.load(tmp_path / "x.rows.npz"))  # written after row 25, not after 30 (main folds it into OUT)
    assert {k for k in saved if k.startswith("task_tokens_")} == {f"task_tokens_{i}" for i in range(25)}
    for i in range(25):
        np.testing.assert_array_equal(saved[f"task_tokens_{i}"], out[f"task_tokens_{i}"])
    assert float(saved["seconds_spent"]) > 0
