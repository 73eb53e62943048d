"""The core CLI: build / project / reconstruct / inspect end to end, every refused input exits non-zero with its
message on stderr and leaves no output behind, --version and -h."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.builder.project import project_adapter
from edge_lorax.cli import cli
from edge_lorax.formats.peft import read_adapter
from edge_lorax.formats.subspace import read_subspace
from edge_lorax.formats.user import read_user
from helpers import corrupt_copy

Q0 = "bert.encoder.layer.0.attention.self.query"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_refused(result, message: str, *outputs: Path):
    """Non-zero exit, the message on stderr, nothing on stdout, and no output (nor temp sibling) left behind."""
    assert result.exit_code != 0, result.output
    assert message in result.stderr, result.stderr
    assert result.stdout == ""
    for out in outputs:
        assert not out.exists(), out
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def good(save_adapter):
    """Three real BERT LoRA adapters of ranks 2-4."""
    return [save_adapter("bert", weight_seed=s, r=r) for s, r in [(1, 2), (2, 4), (3, 3)]]


@pytest.fixture(scope="module")
def built(good, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sub"
    result = run("build", *good, "-o", out, "--components", 4)
    assert result.exit_code == 0, result.output
    return out, result


def test_build_writes_the_subspace_and_reports_on_stdout(built, good):
    out, result = built
    sub = read_subspace(out)
    assert f"fingerprint: {sub.fingerprint}" in result.stdout
    assert "K: [4]" in result.stdout and "r: [4]" in result.stdout and "modules: 4" in result.stdout
    assert "sources: 3" in result.stdout and f"output: {out}" in result.stdout
    assert sub.config["mean"] == "keep"  # the default the paper table picked (benchmarks/paper_table/report.md)
    assert "modules" in result.stderr  # the progress bar goes to stderr
    assert [s["name"] for s in sub.config["sources"]] == [g.name for g in good]


def test_build_options_reach_the_builder(good, tmp_path):
    result = run("build", *good, "-o", tmp_path / "s", "--explained-variance", 0.6, "--augment", 2, "--mean", "keep",
                 "--seed", 3)
    assert result.exit_code == 0, result.output
    cfg = read_subspace(tmp_path / "s").config
    assert cfg["mean"] == "keep" and cfg["augment"] == 2 and cfg["seed"] == 3
    assert cfg["selection"] == {"explained_variance": 0.6}
    assert all(m["augmented"] == 2 and m["K"] == m["principal"] + 2 for m in cfg["modules"].values())


def test_project_reconstruct_inspect_round_trip(built, good, tmp_path):
    sub_dir, _ = built
    user = tmp_path / "user.npz"
    result = run("project", sub_dir, good[1], "-o", user, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = project_adapter(read_subspace(sub_dir), good[1])
    assert data["relative_error"] == pytest.approx(expected.overall, abs=1e-6)
    assert data["module_errors"][Q0] == pytest.approx(expected.errors[Q0], abs=1e-6)
    assert data["bytes"] == user.stat().st_size  # the file's size, as inspect and project-many say (issue 26)
    result = run("reconstruct", sub_dir, user, "-o", tmp_path / "rec")
    assert result.exit_code == 0, result.output
    assert read_adapter(tmp_path / "rec").ranks[Q0] == 4

    inspected = json.loads(run("inspect", sub_dir, "--json").stdout)
    cfg = read_subspace(sub_dir).config
    assert inspected["kind"] == "subspace" and inspected["fingerprint"] == cfg["fingerprint"]
    assert inspected["K"] == [4] and inspected["r"] == [4] and inspected["modules"] == 4 and inspected["sources"] == 3
    assert inspected["explained_variance_A_min"] == min(m["explained_variance_A"] for m in cfg["modules"].values())
    assert inspected["bytes"] == sum(f.stat().st_size for f in sub_dir.iterdir())

    inspected = json.loads(run("inspect", user, "--json").stdout)
    assert inspected["kind"] == "coefficients" and inspected["fingerprint"] == cfg["fingerprint"]
    assert inspected["parameters"] == 128 and inspected["shapes"] == ["(4, 4)"] and inspected["modules"] == 4
    assert inspected["bytes"] == user.stat().st_size

    text = run("inspect", good[0]).stdout
    assert "kind: peft-lora" in text and "ranks: [2]" in text and "modules: 4" in text
    assert "base_model: edge-lorax/tiny-random-bert" in text and f"parameters: {4 * 2 * (32 + 32)}" in text


def test_project_refuses_to_overwrite_a_user_without_the_flag(built, good, tmp_path):
    sub_dir, user = built[0], tmp_path / "user.npz"
    assert run("project", sub_dir, good[0], "-o", user).exit_code == 0
    before = user.read_bytes()
    result = run("project", sub_dir, good[1], "-o", user)
    assert result.exit_code == 1 and "already exists; pass --overwrite" in result.stderr
    assert user.read_bytes() == before
    assert run("project", sub_dir, good[1], "-o", user, "--overwrite").exit_code == 0
    assert user.read_bytes() != before  # the other adapter's coefficients
    result = run("train", "--subspace", sub_dir, "--data", "vader:nyt-binary", "-o", user)  # refused before training
    assert result.exit_code == 1 and "already exists; pass --overwrite" in result.stderr


def test_version_and_help():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == "edge-lorax, version 0.1.0"
    for flag in ("-h", "--help"):
        result = run(flag)
        assert result.exit_code == 0
        assert all(cmd in result.stdout for cmd in ("build", "project", "reconstruct", "inspect"))
    result = run("build", "-h")
    assert result.exit_code == 0 and "--explained-variance" in result.stdout and "--augment" in result.stdout


def test_console_script_exits_non_zero_on_refusal(save_adapter, tmp_path):
    """The installed entry point, in a real process: exit 1, one-line error on stderr, no output."""
    script = Path(sys.executable).with_name("edge-lorax")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from edge_lorax.cli import main; main()"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd + ["--version"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and "0.1.0" in done.stdout
    dora = save_adapter("bert", use_dora=True)
    done = subprocess.run(cmd + ["build", str(dora), "-o", str(tmp_path / "s")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("Error: ") and "DoRA adapter" in done.stderr
    assert not (tmp_path / "s").exists()


# The process a plain `pip install edge-lorax` gives: `module` cannot be imported (None in sys.modules).
WITHOUT = "import sys; sys.modules[sys.argv.pop(1)] = None; sys.argv[0] = 'edge-lorax'; from edge_lorax.cli import main; main()"


@pytest.mark.parametrize("module, args, line", [
    ("onnxscript", ["demo", "-o"], "edge-lorax demo needs the 'export' extra (onnxscript is not installed): "
                                   'pip install "edge-lorax[build,export,bench]"'),
    ("torch", ["demo", "--no-bench", "-o"], "edge-lorax demo needs the 'build' extra (torch is not installed): "
                                            'pip install "edge-lorax[build,export]"'),
    ("torch", ["train-lora", "--data", "vader:tweets-binary", "-o"],
     "edge-lorax train-lora needs the 'build' extra (torch is not installed): " 'pip install "edge-lorax[build]"'),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, module, args, line):
    """Not a ModuleNotFoundError traceback: exit 1, the extra and the install line on stderr, nothing written."""
    done = subprocess.run([sys.executable, "-c", WITHOUT, module, *args, str(tmp_path / "out")], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"Error: {line}\n")
    assert not (tmp_path / "out").exists()


def test_the_extras_table_is_pyproject_s():
    """Every package EXTRAS names is a requirement of the extra it names, and every requirement of those extras has
    its row: a dependency added to an extra without one goes red."""
    import re

    from edge_lorax.cli import EXTRAS, missing_extra

    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dist = {"sklearn": "scikit-learn", "onnxruntime_genai": "onnxruntime-genai"}
    declared = {(extra, re.split(r"[<>=!~\[; ]", req)[0]) for extra in {e for e, _ in EXTRAS.values()} for req in extras[extra]}
    assert {(extra, dist.get(module, module)) for module, (extra, _) in EXTRAS.items()} == declared
    assert all(extra in install.split(",") and set(install.split(",")) <= set(extras) for extra, install in EXTRAS.values())
    assert missing_extra(ModuleNotFoundError(name="yaml"), "run") is None  # not an extra's: the traceback stays


# ---- every refused input: message, exit code, nothing written ----

def _bin(save_adapter, tmp_path):
    return save_adapter("bert", safe=False)


def _config_only(save_adapter, tmp_path):
    (tmp_path / "config-only").mkdir()
    shutil.copy(save_adapter("bert") / "adapter_config.json", tmp_path / "config-only")
    return tmp_path / "config-only"


def _weights_only(save_adapter, tmp_path):
    (tmp_path / "weights-only").mkdir()
    shutil.copy(save_adapter("bert") / "adapter_model.safetensors", tmp_path / "weights-only")
    return tmp_path / "weights-only"


BAD_ADAPTERS = {
    "dora": (lambda sa, tp: sa("bert", use_dora=True), "DoRA adapter (use_dora=true)"),
    "vera": (lambda sa, tp: sa("bert", peft_config=_vera()), "peft_type VERA is not LORA"),
    "ia3": (lambda sa, tp: sa("bert", peft_config=_ia3()), "peft_type IA3 is not LORA"),
    "bin": (_bin, "pickled weights are never loaded; convert with"),
    "no-weights": (_config_only, "no adapter_model.safetensors"),
    "no-config": (_weights_only, "no adapter_config.json"),
    "nan": (lambda sa, tp: corrupt_copy(sa("bert"), tp / "nan", "layer.1.attention.self.value.lora_A.weight", np.nan),
            "NaN or Inf in bert.encoder.layer.1.attention.self.value"),
    "inf": (lambda sa, tp: corrupt_copy(sa("bert"), tp / "inf", f"{Q0}.lora_B.weight", -np.inf), f"NaN or Inf in {Q0}"),
}


def _vera():
    from peft import VeraConfig

    return VeraConfig(r=4, target_modules=["query", "value"])


def _ia3():
    from peft import IA3Config

    return IA3Config(target_modules=["query", "value"], feedforward_modules=[])


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_refused_by_build_and_project(case, good, built, save_adapter, tmp_path):
    make, message = BAD_ADAPTERS[case]
    bad = make(save_adapter, tmp_path)
    assert_refused(run("build", good[0], bad, "-o", tmp_path / "sub", "-k", 2), message, tmp_path / "sub")
    assert_refused(run("project", built[0], bad, "-o", tmp_path / "u.npz"), message, tmp_path / "u.npz")
    if case in ("dora", "vera", "ia3", "bin", "no-weights"):  # inspect reads the config and the header only
        assert_refused(run("inspect", bad), message)


def test_missing_adapter_folder_is_a_usage_error(good, tmp_path):
    result = run("build", good[0], tmp_path / "nowhere", "-o", tmp_path / "sub")
    assert result.exit_code == 2 and "does not exist" in result.stderr and not (tmp_path / "sub").exists()


def test_disagreeing_adapters_refused_naming_adapter_and_module(good, save_adapter, tmp_path):
    out = tmp_path / "sub"
    other = save_adapter("bert", weight_seed=7, target_modules=["query", "key"])
    assert_refused(run("build", good[0], other, "-o", out), f"{other}: target modules differ from {good[0]}", out)
    wider = save_adapter("bert", weight_seed=7, hidden=48)
    assert_refused(run("build", good[0], wider, "-o", out), f"{wider}: module {Q0} is (48, 48)", out)


def test_base_mismatch_refused_unless_allowed(good, save_adapter, tmp_path):
    out = tmp_path / "sub"
    foreign = save_adapter("bert", weight_seed=8, base_id="someone/other-bert")
    assert_refused(run("build", good[0], foreign, "-o", out), "pass --allow-base-mismatch", out)
    result = run("build", good[0], foreign, "-o", out, "--allow-base-mismatch", "-k", 2)
    assert result.exit_code == 0, result.output
    assert read_subspace(out).config["sources"][1]["base_model"] == "someone/other-bert"


def test_k_beyond_rank_refused_suggesting_augment(good, tmp_path):
    out = tmp_path / "sub"
    assert_refused(run("build", *good, "-o", out, "-k", 20, "--mean", "drop"), "exceeds the rank 8 of 3 stacked adapters", out)
    assert_refused(run("build", *good, "-o", out, "-k", 20, "--mean", "drop"), "--components 8 --augment 12", out)
    result = run("build", *good, "-o", out, "-k", 8, "--augment", 12, "--mean", "drop")
    assert result.exit_code == 0 and "K: [20]" in result.stdout


def test_existing_output_refused_without_overwrite(good, built, tmp_path):
    sub_dir, _ = built
    out = tmp_path / "sub"
    assert run("build", *good, "-o", out, "-k", 2).exit_code == 0
    before = (out / "subspace.safetensors").read_bytes()
    result = run("build", *good, "-o", out, "-k", 3)
    assert result.exit_code == 1 and f"{out}: already exists; pass --overwrite" in result.stderr
    assert (out / "subspace.safetensors").read_bytes() == before
    result = run("build", *good, "-o", out, "-k", 3, "--overwrite")
    assert result.exit_code == 0 and read_subspace(out).config["selection"] == {"components": 3}

    run("project", sub_dir, good[0], "-o", tmp_path / "u.npz")
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "keep.txt").write_text("mine")
    result = run("reconstruct", sub_dir, tmp_path / "u.npz", "-o", rec)
    assert result.exit_code == 1 and "already exists; pass --overwrite" in result.stderr
    assert [p.name for p in rec.iterdir()] == ["keep.txt"]
    assert run("reconstruct", sub_dir, tmp_path / "u.npz", "-o", rec, "--overwrite").exit_code == 0
    assert sorted(p.name for p in rec.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_coefficients_for_another_subspace_refused(good, built, tmp_path):
    sub_dir, _ = built
    other = tmp_path / "other"
    assert run("build", *good, "-o", other, "-k", 3).exit_code == 0
    user = tmp_path / "u.npz"
    assert run("project", other, good[0], "-o", user).exit_code == 0
    fp_user, fp_sub = read_user(user).fingerprint, read_subspace(sub_dir).fingerprint
    out = tmp_path / "rec"
    assert_refused(run("reconstruct", sub_dir, user, "-o", out),
                   f"made for subspace {fp_user}, this one is {fp_sub}; re-project or retrain", out)


def test_pickled_npz_refused(built, tmp_path):
    sub_dir, _ = built
    user = tmp_path / "pickled.npz"
    with open(user, "wb") as f:
        np.savez(f, **{"__meta__": np.array("{}"), f"{Q0}.coeff_A": np.array([{"x": 1}], dtype=object)})
    out = tmp_path / "rec"
    assert_refused(run("reconstruct", sub_dir, user, "-o", out), "holds pickled objects, which are never loaded", out)
    assert_refused(run("inspect", user), "holds pickled objects")
    raw = tmp_path / "raw.npz"
    with open(raw, "wb") as f:
        np.save(f, np.array([{"x": 1}], dtype=object), allow_pickle=True)  # an object .npy under an .npz name
    assert_refused(run("reconstruct", sub_dir, raw, "-o", out), "not an .npz file", out)


def test_a_failed_write_leaves_nothing_and_keeps_the_old_output(tmp_path):
    from edge_lorax.formats.atomic import atomic_dir, atomic_file

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "f").write_text("old")
    (tmp_path / "u.npz").write_text("old")
    for target, ctx in ((tmp_path / "new", atomic_dir), (tmp_path / "old", lambda p: atomic_dir(p, True)),
                        (tmp_path / "u.npz", atomic_file)):
        with pytest.raises(RuntimeError, match="disk full"):
            with ctx(target) as tmp:
                (tmp / "part").write_text("half") if tmp.is_dir() else tmp.write_text("half")
                raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "u.npz"]  # no temp sibling, no partial output
    assert (tmp_path / "old" / "f").read_text() == "old" and (tmp_path / "u.npz").read_text() == "old"


def test_inspect_refuses_what_it_does_not_know(tmp_path):
    (tmp_path / "thing.txt").write_text("x")
    assert_refused(run("inspect", tmp_path / "thing.txt"), "not a subspace folder, PEFT adapter folder, bundle or .npz")


def test_verdict_states_the_rule_and_the_outcome():
    """describe.verdict: what `export` prints per precision — the parity bound (or that there is none), the response
    floor, pass / FAIL (issue 26: an int4 line used to print a bare max_abs_diff of 44.92)."""
    from edge_lorax.describe import verdict

    ok = {"max_abs_diff": 3.1e-6, "tolerance": 1e-4, "scale": 12.3, "response": 1.0, "response_min": 0.9}
    assert verdict(ok) == "max |Δ| 3.1e-06 <= 0.0001 x 12.3, response 1.000 >= 0.9: pass"
    assert verdict({**ok, "max_abs_diff": 0.5}).endswith(": FAIL")
    assert verdict({**ok, "response": 0.2}).endswith(": FAIL")
    int4 = {"max_abs_diff": 44.92, "tolerance": None, "scale": 26.0, "response": 0.78, "response_min": 0.5}
    assert verdict(int4) == ("max |Δ| 44.9 (no parity bound at this precision: measured, not asserted), "
                             "response 0.780 >= 0.5: pass")


def test_text_output_has_no_python_reprs():
    """_emit's text mode: nested dicts and lists of dicts (personalize's checkpoints) as indented lines (issue 26)."""
    from click.testing import CliRunner

    from edge_lorax.cli import _emit

    with CliRunner().isolation() as (out, _err, *_):
        _emit({"output": "u.npz", "checkpoints": [{"stage": "head", "loss": 0.5}, {"stage": "mix", "loss": 0.4}],
               "verification": {"fp32": "pass"}, "K": [4]}, False)
        text = out.getvalue().decode()
    assert text == ("output: u.npz\ncheckpoints:\n  - stage: head, loss: 0.5\n  - stage: mix, loss: 0.4\n"
                    "verification:\n  fp32: pass\nK: [4]\n")
