"""The arm64 check's decoder probe (benchmarks/arm64/probe.py) resumes an interrupted task-row run: an emulated 200-row
run takes hours, so it checkpoints every few rows and a rerun keeps the saved rows and computes only the rest; the check
(check.py --progress) mirrors that checkpoint to a folder a session can commit, and a fresh machine resumes from it.
Run here on x86 on the tiny decoder bundle (helpers.decoder); ~10 s on top of the shared bundle."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai")
ARM64 = Path(__file__).resolve().parents[1] / "benchmarks" / "arm64"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"arm64_{name}", ARM64 / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def probe():
    return _load("probe")


@pytest.fixture(scope="module")
def check():
    return _load("check")


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
    saved = {k: v for k, v in full.items() if k in {f"task_tokens_{i}" for i in range(25)}}
    saved["task_tokens_0"] = np.array([9, 9, 9], np.int64)
    np.savez(tmp_path / "resumed.rows.npz", **saved, seconds_spent=np.array(100.0))
    assert probe.main([*args, tmp_path / "resumed.npz"]) == 0
    resumed = dict(np.load(tmp_path / "resumed.npz"))
    np.testing.assert_array_equal(resumed["task_tokens_0"], [9, 9, 9])  # kept, not recomputed
    for i in range(1, 30):  # rows 25-29 computed now, equal to the uninterrupted run
        np.testing.assert_array_equal(resumed[f"task_tokens_{i}"], full[f"task_tokens_{i}"])
    assert resumed["task_exact"][0] == 0 and (resumed["task_exact"][1:] == full["task_exact"][1:]).all()
    assert float(resumed["seconds"]) >= 100.0  # the interrupted run's seconds count


def test_the_probe_checkpoints_every_few_rows(probe, decoder_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "CHECKPOINT_ROWS", 25)
    root, _ = decoder_bundle
    inputs = json.loads(_inputs(tmp_path / "inputs.json").read_text())
    out = probe.decoder(root / "bundle", root / "u3.npz", inputs, tmp_path / "x.rows.npz")
    saved = dict(np.load(tmp_path / "x.rows.npz"))  # written after row 25, not after 30 (main folds it into OUT)
    assert set(saved) == {f"task_tokens_{i}" for i in range(25)} | {"seconds_spent"}  # no prompt logits: KB to carry
    for i in range(25):
        np.testing.assert_array_equal(saved[f"task_tokens_{i}"], out[f"task_tokens_{i}"])
    assert float(saved["seconds_spent"]) > 0


def test_progress_mirrors_the_checkpoint_while_the_probe_runs_and_seeds_a_rerun(check, tmp_path, monkeypatch):
    monkeypatch.setattr(check, "MIRROR_SECONDS", 0.05)
    out, mirror, log = tmp_path / "x" / "a53.npz", tmp_path / "progress" / "b-a53-1.rows.npz", []
    out.parent.mkdir()
    # a probe that checkpoints, then dies: the mirror keeps its checkpoint
    dies = ["sh", "-c", f"printf rows25 > {out.with_suffix('.rows.npz')}; echo boom; exit 3"]
    with pytest.raises(RuntimeError, match="exit 3.*boom"):
        check.run_side("arm64 a53", dies, out, log.append, mirror)
    assert mirror.read_text() == "rows25"
    # a fresh machine: no checkpoint in the exchange; the rerun starts from the mirror's, and on success drops it
    out.with_suffix(".rows.npz").unlink()
    resumes = ["sh", "-c", f"cat {out.with_suffix('.rows.npz')} > {out}"]
    check.run_side("arm64 a53", resumes, out, log.append, mirror)
    assert out.read_text() == "rows25" and not mirror.exists()
    assert any("resuming from" in m for m in log)


def test_the_progress_file_is_named_by_content_not_by_path(check, tmp_path):
    import onnx

    user = tmp_path / "u.npz"
    user.write_bytes(b"coefficients")
    for where, commit in (("a", "0.18.0+8567c6c"), ("b", "0.18.0+ce9cf94")):  # exported at two commits
        (tmp_path / where / "int4").mkdir(parents=True)
        (tmp_path / where / "int4" / "model.onnx.data").write_bytes(b"weights")
        model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []), producer_version=commit)
        onnx.save(model, tmp_path / where / "int4" / "model.onnx")
    name = lambda where, inputs: check.progress_key(tmp_path / where / "int4", user, inputs)  # noqa: E731
    assert name("a", {"rows": 1}) == name("b", {"rows": 1})  # a rebuilt bundle elsewhere finds it
    assert name("a", {"rows": 2}) != name("a", {"rows": 1})
    assert check.progress_file(tmp_path, tmp_path / "a" / "int4", "a64fx", name("a", {"rows": 1})).name.startswith("int4-a64fx-")
    (tmp_path / "b" / "int4" / "model.onnx.data").write_bytes(b"other weights")
    assert name("a", {"rows": 1}) != name("b", {"rows": 1})  # another build starts afresh


def test_the_armv9_core_runs_qemu_max_with_128_bit_sve_and_no_sme(check, tmp_path):
    command = check.arm64_command(tmp_path / "rootfs", "max-sve128", tmp_path / "bundle", tmp_path, ["/mnt/bundle"])
    assert "QEMU_CPU=max,sme=off,sve-default-vector-length=16 " in command[-1]
    assert "sve2" in (tmp_path / "cpuinfo-max-sve128").read_text() and "i8mm" in check.cpuinfo("max-sve128")
    assert "QEMU_CPU=cortex-a53 " in check.arm64_command(tmp_path / "r", "cortex-a53", tmp_path / "b", tmp_path, [])[-1]


def test_shards_answer_their_rows_and_merge_to_the_unsharded_run(probe, check, decoder_bundle, tmp_path):
    root, _ = decoder_bundle
    inputs = _inputs(tmp_path / "inputs.json", rows=12)
    args = [root / "bundle", root / "u3.npz", inputs]
    assert probe.main([*args, tmp_path / "full.npz"]) == 0
    full = dict(np.load(tmp_path / "full.npz"))
    parts = []
    for j in range(3):  # a shard writes its rows' checkpoint and nothing else
        assert probe.main([*args, tmp_path / f"a.shard{j}.npz", f"--shard={j}/3"]) == 0
        parts.append(tmp_path / f"a.shard{j}.rows.npz")
        assert {k for k in np.load(parts[-1]).files if k.startswith("task_")} == {f"task_tokens_{i}" for i in range(j, 12, 3)}
        assert not (tmp_path / f"a.shard{j}.npz").exists()
    merged = check.merge_rows({"seconds_spent": np.array(5.0)}, parts)
    assert float(merged["seconds_spent"]) > 5.0 and len(merged) == 13
    probe.save_npz(tmp_path / "a.rows.npz", merged)
    assert probe.main([*args, tmp_path / "a.npz"]) == 0  # the unsharded run finds every row and completes
    done = dict(np.load(tmp_path / "a.npz"))
    assert done.keys() == full.keys()
    for k in full:
        if k != "seconds":
            np.testing.assert_array_equal(done[k], full[k])


def test_merging_refuses_two_checkpoints_that_disagree_on_a_row(check, probe, tmp_path):
    probe.save_npz(tmp_path / "s0.rows.npz", {"task_tokens_0": np.array([1, 2]), "seconds_spent": np.array(1.0)})
    probe.save_npz(tmp_path / "s1.rows.npz", {"task_tokens_0": np.array([1, 3]), "seconds_spent": np.array(1.0)})
    with pytest.raises(RuntimeError, match="s1.rows.npz: task_tokens_0 differs"):
        check.merge_rows({}, [tmp_path / "s0.rows.npz", tmp_path / "s1.rows.npz"])


SHARD = """import os, sys
import numpy as np
path, row = sys.argv[1], int(sys.argv[2])
saved = dict(np.load(path))
if saved["task_tokens_0"].tolist() != [7] or float(saved["seconds_spent"]) != 0:
    sys.exit("not seeded with the rows done")
saved[f"task_tokens_{row}"], saved["seconds_spent"] = np.array([row]), np.array(2.0)
np.savez(path + ".tmp.npz", **saved)
os.replace(path + ".tmp.npz", path)
"""


def test_run_shards_seeds_each_shard_with_the_rows_done_merges_and_mirrors(check, probe, tmp_path, monkeypatch):
    monkeypatch.setattr(check, "MIRROR_SECONDS", 0.05)
    out, mirror = tmp_path / "a53.npz", tmp_path / "progress" / "b-a53-1.rows.npz"
    mirror.parent.mkdir()
    probe.save_npz(mirror, {"task_tokens_0": np.array([7]), "seconds_spent": np.array(10.0)})  # a committed run's rows
    commands = [[sys.executable, "-c", SHARD, str(out.with_suffix(f".shard{j}.rows.npz")), str(j + 1)] for j in range(2)]
    check.run_shards("arm64 a53", commands, out, lambda m: None, mirror)
    merged = {k: v.tolist() for k, v in np.load(out.with_suffix(".rows.npz")).items()}
    assert merged == {"task_tokens_0": [7], "task_tokens_1": [1], "task_tokens_2": [2], "seconds_spent": 14.0}
    assert {k: v.tolist() for k, v in np.load(mirror).items()} == merged
    out.with_suffix(".rows.npz").unlink()  # a shard that fails is named with its last lines
    with pytest.raises(RuntimeError, match="shard 0 failed .*exit 1.*not seeded"):
        check.run_shards("arm64 a53", [[sys.executable, "-c", "import sys; sys.exit('not seeded')"]], out,
                         lambda m: None)


def test_the_report_joins_runs_of_one_bundle_on_the_same_inputs_into_one_table(tmp_path):
    report = _load("report")
    made = {"command": "scripts/check-arm64.sh b u --cpus cortex-a53", "git_commit": "0123456789abcdef+dirty",
            "machine": {"cpu": "Xeon", "usable_cores": 2}, "qemu": "qemu-aarch64 version 7.2", "started": "t0", "finished": "t1"}
    run = lambda cpu, em, **m: (tmp_path / f"{cpu}.json", {"bundle": "int4", "inputs": {"texts": 200},  # noqa: E731
                                                             "x86": {"exact_match": em}, "cpus": {cpu: {}}, **m})
    joined = report.grouped([run("cortex-a76", 91.5), run("cortex-a53", 91.5, made_with=made), run("a64fx", 90.0)])
    assert [list(g["cpus"]) for g in joined] == [["cortex-a76", "cortex-a53"], ["a64fx"]]  # another x86 side: apart
    assert joined[0]["runs"] == ["`cortex-a76.json`: added in commit (not committed)",
                                 "`cortex-a53.json`: `scripts/check-arm64.sh b u --cpus cortex-a53`, commit 0123456789+dirty, "
                                 "Xeon (2 cores), qemu-aarch64 version 7.2, t0 – t1"]


def test_a_check_result_carries_the_report_stamp_taken_before_the_run_and_the_qemu(check):
    st = check.stamp("scripts/check-arm64.sh b u", dirty_paths=check.DEPENDS)
    made = check.made_with({"cpus": {"cortex-a53": {}}}, st)
    assert made["cpus"] == {"cortex-a53": {}} and made["made_with"]["started"] == st["started"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=check.ROOT).stdout.strip()
    assert made["made_with"]["git_commit"].removesuffix("+dirty") == head
    assert {"command", "machine", "versions", "finished", "qemu"} <= set(made["made_with"])


def test_the_json_a_check_writes_is_stamped_and_holds_no_local_path(check, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    (tmp_path / "u.npz").write_bytes(b"u")
    monkeypatch.setattr(check, "check", lambda *a: {"cpus": {}})
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(check.Path, "home", staticmethod(lambda: tmp_path))
    out = tmp_path / "run.json"
    assert check.main([str(bundle), str(tmp_path / "u.npz"), "--cpus", "cortex-a53", "--rootfs", str(tmp_path / "r"),
                       "--json", str(out)]) == 0
    text = out.read_text()
    assert str(tmp_path) not in text and str(check.ROOT) not in text
    assert json.loads(text)["made_with"]["command"] == "scripts/check-arm64.sh ~/bundle ~/u.npz --cpus cortex-a53 --rootfs ~/r --json ~/run.json"
