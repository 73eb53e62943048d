"""Issue 25 cause 5, export and runtime variants: option combinations that passed validation but meant nothing.

`--num-labels` with a task that has no classification head (it was ignored), `--task causal-lm` on an encoder (a
bundle `run` then failed on), `--quantize int4` / `--builder-option` on a Llama exported for another task (refused
for a wrong reason), and a per-example bundle asked to serve one user per run (pointed at a model it does not have).
Each is refused before any work in one line naming the cause and the fix, from the library and the CLI (exit 1),
with nothing left behind; the legitimate neighbours still export.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from edge_lorax.cli import cli  # noqa: E402
from edge_lorax.export import export_bundle  # noqa: E402
from edge_lorax.formats import names  # noqa: E402
from edge_lorax.formats.errors import InputError  # noqa: E402
from edge_lorax.formats.subspace import read_subspace  # noqa: E402
from edge_lorax.formats.user import write_user  # noqa: E402
from helpers import random_user  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """helpers.tiny's Llama set-up (LlamaForCausalLM, a KV-cache model type; head size 8)."""
    from helpers.tiny import tiny_setup

    return tiny_setup("llama", tmp_path_factory.mktemp("llama"), n_adapters=2, k=2)


def one_line(result, *words):
    """Exit 1, no traceback, exactly one Error: line holding every word."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


NUM_LABELS = "is for --task classification"
INT4 = "the KV-cache decoder: --task causal-lm on a llama, qwen2"  # the table's KV-cache types, listed
# case -> (set-up, export options, words of the refusal)
CASES = {
    "features-num-labels": ("bert", {"task": "features", "num_labels": 3}, (NUM_LABELS, "--task features has no")),
    "default-task-num-labels": ("bert", {"num_labels": 3}, (NUM_LABELS, "the default here")),
    "regression-num-labels": ("bert", {"task": "regression", "num_labels": 3}, (NUM_LABELS, "has one output")),
    "causal-num-labels": ("llama", {"task": "causal-lm", "num_labels": 2}, (NUM_LABELS, "--task causal-lm")),
    "classification-one-label": ("bert", {"task": "classification", "num_labels": 1}, ("2 or more labels",
                                                                                       "--task regression")),
    "causal-on-encoder": ("bert", {"task": "causal-lm"}, ("needs a causal language model", "['BertModel']",
                                                          "use --task features, classification or regression")),
    "causal-on-encoder-int8": ("bert", {"task": "causal-lm", "quantize": "int8"}, ("needs a causal language model",)),
    "regression-int4-llama": ("llama", {"task": "regression", "quantize": "int4"}, (INT4, "(llama) with --task "
                                                                                  "regression", "--quantize int8")),
    "classification-int4-llama": ("llama", {"task": "classification", "quantize": "int4"}, (INT4, "classification")),
    "features-builder-option-llama": ("llama", {"task": "features", "builder_options": ("int4_block_size=32",)},
                                      (INT4, "--task features")),
    "features-int4-bert": ("bert", {"task": "features", "quantize": "int4"}, (INT4, "(bert) with --task features")),
}
LIBRARY_ONLY = {  # values click's IntRange refuses with exit 2 before the library sees them
    "num-labels-zero": ("bert", {"task": "classification", "num_labels": 0}, ("--num-labels 0",)),
    "num-labels-negative": ("bert", {"task": "classification", "num_labels": -2}, ("--num-labels -2",)),
    "num-labels-bool": ("bert", {"task": "classification", "num_labels": True}, ("--num-labels True",)),
    "num-labels-float": ("bert", {"task": "classification", "num_labels": 2.5}, ("--num-labels 2.5",)),
}


def _args(options: dict) -> list:
    """ExportConfig fields as `edge-lorax export` options."""
    out = []
    for key, value in options.items():
        for v in (value if isinstance(value, tuple) else (value,)):
            out += [f"--{key.replace('_', '-').replace('builder-options', 'builder-option')}", str(v)]
    return out


@pytest.mark.parametrize("case", sorted({**CASES, **LIBRARY_ONLY}))
def test_library_refuses_before_any_work(case, request, tmp_path):
    which, options, words = {**CASES, **LIBRARY_ONLY}[case]
    s = request.getfixturevalue(which)
    with pytest.raises(InputError) as err:
        export_bundle(s.model, s.subspace, tmp_path / "out", **options)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_refuses_in_one_line(case, request, tmp_path):
    which, options, words = CASES[case]
    s = request.getfixturevalue(which)
    args = ["export", "--model", str(s.model), "--subspace", str(s.subspace), "-o", str(tmp_path / "out"), *_args(options)]
    one_line(CliRunner().invoke(cli, args), *words)
    assert list(tmp_path.iterdir()) == []


def test_legitimate_neighbours_still_export(bert, tmp_path):
    """--num-labels with classification, 1 with regression, and a head-carrying user's own width."""
    assert export_bundle(bert.model, bert.subspace, tmp_path / "r", task="regression", num_labels=1, gradient=False)
    assert export_bundle(bert.model, bert.subspace, tmp_path / "c", task="classification", num_labels=3, gradient=False)
    head3 = write_user(random_user(read_subspace(bert.subspace), 5, labels=3), tmp_path / "h3.npz")
    out = export_bundle(bert.model, bert.subspace, tmp_path / "h", head3, num_labels=3, gradient=False)
    assert (out / names.BUNDLE_MANIFEST).is_file()


# -------------------------------------------------------------------------------- per-example bundles at runtime

@pytest.fixture(scope="module")
def per_example(bert, tmp_path_factory):
    """A per-example classification bundle of the tiny BERT: its one model.onnx takes a user per example."""
    return export_bundle(bert.model, bert.subspace, tmp_path_factory.mktemp("pe") / "pe", task="classification",
                         per_example=True, gradient=False)


PER_EXAMPLE = ("exported with --per-example", "run_mixed", "re-export without --per-example")


def test_run_on_per_example_bundle_names_what_it_has(per_example):
    line = one_line(CliRunner().invoke(cli, ["run", str(per_example), "hello", "--max-length", "16"]), *PER_EXAMPLE)
    assert "fp32 or int8" not in line and str(per_example / names.BUNDLE_MODEL) in line


def test_one_user_per_run_on_per_example_bundle(per_example, bert):
    from edge_lorax.runtime import load_user, open_bundle, run_arrays

    bundle = open_bundle(per_example)
    user = load_user(bundle, bert.user)
    tokens = {names.INPUT_IDS: np.array([[1, 2, 3]]), names.ATTENTION_MASK: np.array([[1, 1, 1]])}
    with pytest.raises(InputError) as err:
        run_arrays(bundle, user, tokens)
    assert all(w in str(err.value) for w in PER_EXAMPLE) and "\n" not in str(err.value)


def test_mixed_batch_on_shared_bundle_says_re_export(bert, tmp_path):
    from edge_lorax.runtime import load_user, open_bundle, run_mixed

    bundle = open_bundle(export_bundle(bert.model, bert.subspace, tmp_path / "b", task="features"))
    user = load_user(bundle, bert.user)
    tokens = {names.INPUT_IDS: np.array([[1, 2, 3]]), names.ATTENTION_MASK: np.array([[1, 1, 1]])}
    with pytest.raises(InputError, match="takes one user per run; .* re-export the bundle with --per-example"):
        run_mixed(bundle, [user], tokens)
