"""personalize does bounded work before its first word (issue 25, cause 2): a 50,000-row file under --budget-seconds 3
finishes in seconds and says so early on stderr; --steps with a large file uses a seeded sample of FitConfig.max_rows
(reproducible), a small file is untouched by the bound; a sample keeps every class; the width refusal lists the classes.
"""

import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.cli import cli
from edge_lorax.formats.tasks import CLASSIFICATION, Split
from helpers.runtime import WORDS


def _local_file(path, rows: int, seed: int = 0, classes: str = "ny"):
    """A CSV of `rows` word salads, labelled by whether they hold 'good' (or round-robin over `classes`)."""
    rng = np.random.default_rng(seed)
    lines = ["text,label"]
    for i in range(rows):
        words = rng.choice(WORDS, int(rng.integers(3, 8)))
        label = ("y" if "good" in words else "n") if classes == "ny" else classes[i % len(classes)]
        lines.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fifty_thousand_rows_with_a_three_second_budget(setup, tmp_path):
    data = _local_file(tmp_path / "big.csv", 50_000)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edge_lorax", "personalize", str(setup.bundle), "--data", str(data),
                             "-o", str(tmp_path / "u.npz"), "--budget-seconds", "3", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stamped = []
    try:
        for line in proc.stderr:
            stamped.append((time.monotonic() - start, line.strip()))
        proc.wait(timeout=60)
    finally:
        proc.kill()
    took = time.monotonic() - start
    assert proc.returncode == 0, stamped
    assert took < 30, (took, stamped)
    assert stamped and stamped[0][0] < 20 and "50000 examples (40000 to fit, 10000 held out)" in stamped[0][1], stamped
    sampled = [line for _, line in stamped if line.startswith("using ")]
    assert sampled and "of 50000 (a seeded sample" in sampled[0], stamped
    assert (tmp_path / "u.npz").is_file() and "examples_read: 50000" in proc.stdout.read()


def test_steps_on_a_large_file_use_a_reproducible_sample(setup, tmp_path):
    from edge_lorax.runtime.bundle import SessionConfig
    from edge_lorax.runtime.personalize import FitConfig, personalize_file

    data = _local_file(tmp_path / "mid.csv", 2_000)
    config = FitConfig(steps=4, max_rows=300, method="head")
    said = []
    reports = [personalize_file(setup.bundle, data, tmp_path / f"{n}.npz", config=config, progress=said.append,
                                session=SessionConfig(threads=1)).report for n in ("a", "b")]
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert reports[0]["fit_rows"] + reports[0]["heldout_rows"] in (300, 301, 302) and reports[0]["examples_read"] == 2000
    assert any(line.startswith("using ") and "of 2000" in line for line in said), said


def test_a_small_file_is_untouched_by_the_bound(setup, tmp_path):
    from edge_lorax.runtime.bundle import SessionConfig
    from edge_lorax.runtime.personalize import FitConfig, personalize_file

    data = _local_file(tmp_path / "small.csv", 200)
    for name, rows in (("default.npz", FitConfig.max_rows), ("unbounded.npz", 10**9)):
        personalize_file(setup.bundle, data, tmp_path / name, config=FitConfig(steps=6, max_rows=rows),
                         session=SessionConfig(threads=1))
    assert (tmp_path / "default.npz").read_bytes() == (tmp_path / "unbounded.npz").read_bytes()


def test_a_sample_keeps_every_class_of_the_split():
    from edge_lorax.runtime.personalize import _sample

    targets = np.zeros(5_000, np.int64)
    targets[[17, 4_321]] = [1, 2]
    split = Split(tuple(f"t{i}" for i in range(5_000)), targets)
    for seed in range(5):
        got = _sample(split, 50, np.random.default_rng(seed), CLASSIFICATION)
        assert set(got.targets.tolist()) == {0, 1, 2} and 50 <= len(got) <= 52
        assert list(got.texts) == sorted(got.texts, key=lambda t: int(t[1:]))  # kept in file order


def test_width_refusal_lists_the_classes_found(setup, tmp_path):
    data = _local_file(tmp_path / "three.csv", 30, classes="abc")
    result = CliRunner().invoke(cli, ["personalize", str(setup.bundle), "--data", str(data), "-o", str(tmp_path / "u.npz")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "3 classes ('a', 'b', 'c')" in result.output and "--num-labels 3" in result.output


@pytest.mark.parametrize("labels, fragment", [
    ([f"{v / 10:.1f}" for v in range(40)] * 3, "--kind regression"),
    (["Yes", "yes"] * 10, "written two ways"),
])
def test_personalize_refuses_misread_labels_before_the_bundle(setup, tmp_path, labels, fragment):
    data = tmp_path / "l.csv"
    data.write_text("text,label\n" + "".join(f"w{i} good,{lab}\n" for i, lab in enumerate(labels)))
    result = CliRunner().invoke(cli, ["personalize", str(setup.bundle), "--data", str(data), "-o", str(tmp_path / "u.npz")])
    assert result.exit_code == 1 and fragment in result.output and len(result.output.strip().splitlines()) == 1
