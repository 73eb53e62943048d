"""Issue 11, the adapter / subspace / builder side: every bad input to build, project, reconstruct, inspect, train,
train-lora is refused by the CLI with exit 1 (2 for click's own range checks), one `Error:` line naming the file or
option, no traceback, and nothing left at the target or beside it; what can be carried is carried.

Kinds: 1 every adapter tensor used, carried (one modules_to_save head) or refused with the list; a merged model
carries the user's head and labels. 2 config cross-checked with the tensors as PEFT would. 3 numeric options
range-checked against the model and subspace before any work, outputs checked writable first. 4 damaged
safetensors and JSON (adapters, subspaces) are one line naming the file. 6 one module-name rule for every command.
10 model folders with pickled weights only are refused with the conversion. The shared case files
(../shared/cases/adapters) run as they are when present. Property-based fuzzing of these loaders is tests/test_fuzz.py.
"""

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from edge_lorax.builder.project import project_adapter
from edge_lorax.builder.subspace import build_subspace
from edge_lorax.cli import cli
from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.peft import read_adapter, read_factors, read_head
from edge_lorax.formats.subspace import fingerprint_tensors, read_subspace
from helpers import build_tiny_model, random_user

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "cases" / "adapters"  # a copy of ../shared/cases/adapters, shipped so every clone runs them
WEIGHTS, CONFIG = names.ADAPTER_WEIGHTS, names.ADAPTER_CONFIG
Q0 = "bert.encoder.layer.0.attention.self.query"


# ------------------------------------------------------------------------------------------------ helpers

def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(result, *named, code=1) -> str:
    """Exit `code`, no traceback (no uncaught exception), exactly one `Error:` line naming one of `named`."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert any(str(n) in lines[0] for n in named), lines[0]
    return lines[0]


def snapshot(folder: Path) -> set:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def refused_leaving_nothing(work: Path, args, *named, code=1) -> str:
    """Run in `work` (outputs under it): refused as above, and `work` holds exactly what it held before."""
    before = snapshot(work)
    line = refused(run(*args), *named, code=code)
    assert snapshot(work) == before, sorted(snapshot(work) ^ before)
    return line


def copy_adapter(src: Path, dst: Path, *, config=None, tensors=None, edit=None) -> Path:
    """A copy of an adapter folder with its config updated by `config`, its tensors replaced by `tensors` (or
    edited in place by `edit(tensors)`). Copies are writable even when the source is read-only."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    if config is not None:
        cfg = json.loads((dst / CONFIG).read_text())
        cfg.update(config)
        (dst / CONFIG).write_text(json.dumps(cfg))
    if tensors is not None or edit is not None:
        data = tensors if tensors is not None else load_file(str(dst / WEIGHTS))
        if edit is not None:
            edit(data)
        save_file(data, str(dst / WEIGHTS))
    return dst


def write_bytes(src: Path, dst: Path, file: str, data: bytes) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    (dst / file).write_bytes(data)
    return dst


def rename_keys(src: Path, dst: Path, rename) -> Path:
    def edit(tensors):
        for key in list(tensors):
            tensors[rename(key)] = tensors.pop(key)

    return copy_adapter(src, dst, edit=edit)


@pytest.fixture(scope="module")
def good(save_adapter):
    """Three real tiny-BERT LoRA adapters (r=4), one more with a classifier head in modules_to_save."""
    return [save_adapter("bert", weight_seed=s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def tiny_sub(good, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "sub"
    assert run("build", *good, "-o", out, "-k", 3).exit_code == 0
    return out


@pytest.fixture(scope="module")
def minilm_sub(tmp_path_factory):
    """The demo's kind of subspace: the committed MiniLM adapters, K=2 (no model load)."""
    out = tmp_path_factory.mktemp("minilm") / "sub"
    result = run("build", REPO / "adapters" / "tweets-binary", REPO / "adapters" / "movies-binary", "-o", out, "-k", 2)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def work(tmp_path):
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


# ---------------------------------------------------------------------------- bad adapters: kinds 1, 2 and 4

def _peft(**overrides):
    return lambda sa, tp: sa("bert", weight_seed=11, **overrides)


def _config(**values):
    return lambda sa, tp: copy_adapter(sa("bert", weight_seed=12), tp / "bad", config=values)


def _raw_config(text: bytes):
    return lambda sa, tp: write_bytes(sa("bert", weight_seed=12), tp / "bad", CONFIG, text)


def _weights_bytes(make):
    def build(sa, tp):
        src = sa("bert", weight_seed=12)
        return write_bytes(src, tp / "bad", WEIGHTS, make((src / WEIGHTS).read_bytes()))

    return build


def _tensors(edit, config=None):
    return lambda sa, tp: copy_adapter(sa("bert", weight_seed=12), tp / "bad", edit=edit, config=config)


def _add(key, value):
    return _tensors(lambda t: t.__setitem__(key, value))


def _cast(dtype):
    return _tensors(lambda t: t.update({k: (v * 100).astype(dtype) for k, v in t.items()}))


def _drop_b(tensors):
    del tensors[f"base_model.model.{Q0}.lora_B.weight"]


def _conv_factor(tensors):
    key = f"base_model.model.{Q0}.lora_A.weight"
    tensors[key] = tensors[key][:, :, None].copy()


def _head_without_modules_to_save(tensors):
    tensors["base_model.model.classifier.weight"] = np.ones((2, 32), np.float32)
    tensors["base_model.model.classifier.bias"] = np.zeros(2, np.float32)


BAD_ADAPTERS = {  # name: (maker(save_adapter, tmp_path) -> folder, file named, phrase)
    # kind 1: tensors a ΔW subspace cannot hold
    "bias-lora-only": (_peft(bias="lora_only"), WEIGHTS, "trained biases (bias='lora_only' or 'all')"),
    "bias-all": (_peft(bias="all"), WEIGHTS, "trained biases"),
    "lora-bias": (_peft(lora_bias=True), WEIGHTS, "lora_bias B-biases"),
    "embedding-lora": (_peft(target_modules=["query", "value", "word_embeddings"]), WEIGHTS, "embedding LoRA factors"),
    "trainable-tokens": (_peft(trainable_token_indices=[1, 2]), WEIGHTS, "tensors of no LoRA role"),
    "unknown-tensor": (_add("base_model.model.bert.extra.scale", np.ones(3, np.float32)), WEIGHTS, "no LoRA role"),
    "dora-vector": (_add(f"base_model.model.{Q0}.lora_magnitude_vector", np.ones(32, np.float32)), WEIGHTS,
                    "DoRA magnitude vectors"),
    "head-not-saved": (_tensors(_head_without_modules_to_save), WEIGHTS, "2 tensor(s) a ΔW subspace cannot hold"),
    "saved-non-linear": (_peft(modules_to_save=["pooler"]), WEIGHTS, "not one Linear task head"),
    "two-saved-heads": (_peft(modules_to_save=["classifier", "pooler"]), WEIGHTS, "not one Linear task head"),
    "conv-factor": (_tensors(_conv_factor), WEIGHTS, "not conv LoRA"),
    "lora-a-only": (_tensors(_drop_b), WEIGHTS, f"module {Q0} has only lora_A"),
    # kind 2: config and tensors cross-checked
    "config-r-16": (_config(r=16), WEIGHTS, "rank-4 lora_A/lora_B but adapter_config.json says r=16"),
    "rank-pattern-6": (_config(rank_pattern={"query": 6}), WEIGHTS, "says r=6"),
    "r-0": (_config(r=0), CONFIG, "r 0 is not a positive integer"),
    "r-negative": (_config(r=-4), CONFIG, "r -4 is not a positive integer"),
    "r-string": (_config(r="4"), CONFIG, 'r "4" is not a positive integer'),
    "r-float": (_config(r=4.0), CONFIG, "r 4.0 is not a positive integer"),
    "alpha-negative": (_config(lora_alpha=-8), CONFIG, "lora_alpha -8 is negative"),
    "alpha-zero": (_config(lora_alpha=0), CONFIG, "ΔW = 0: a degenerate adapter"),
    "alpha-string": (_config(lora_alpha="8"), CONFIG, 'lora_alpha "8" is not a finite number'),
    "alpha-bool": (_config(lora_alpha=True), CONFIG, "lora_alpha true is not a finite number"),
    "alpha-nan": (_config(lora_alpha=math.nan), CONFIG, "lora_alpha NaN is not a finite number"),
    "alpha-pattern-zero": (_config(alpha_pattern={"value": 0}), CONFIG, "alpha_pattern['value'] is 0"),
    "rank-pattern-regex": (_config(rank_pattern={"(query": 4}), CONFIG, "rank_pattern key '(query' is not a valid regular"),
    "alpha-pattern-regex": (_config(alpha_pattern={"[value": 4}), CONFIG, "alpha_pattern key '[value' is not a valid"),
    "rank-pattern-list": (_config(rank_pattern=["query"]), CONFIG, "rank_pattern is [\"query\"], not an object"),
    "fan-in-fan-out-string": (_config(fan_in_fan_out="false"), CONFIG, "fan_in_fan_out is \"false\", not true or false"),
    "rslora-string": (_config(use_rslora="yes"), CONFIG, "use_rslora is \"yes\""),
    "base-model-number": (_config(base_model_name_or_path=42), CONFIG, "base_model_name_or_path is 42, not a string"),
    "modules-to-save-string": (_config(modules_to_save="classifier"), CONFIG, "modules_to_save is \"classifier\""),
    "modules-to-save-numbers": (_config(modules_to_save=[1]), CONFIG, "modules_to_save must list module names"),
    "int8": (_cast(np.int8), WEIGHTS, "is I8; integer or quantized LoRA weights are not a PEFT LoRA"),
    "int32": (_cast(np.int32), WEIGHTS, "is I32"),
    "bool": (_tensors(lambda t: t.update({k: v > 0 for k, v in t.items()})), WEIGHTS, "is BOOL"),
    # kind 4: damaged files
    "weights-truncated": (_weights_bytes(lambda b: b[: len(b) // 2]), WEIGHTS, "not a readable safetensors file"),
    "weights-zero-bytes": (_weights_bytes(lambda b: b""), WEIGHTS, "not a readable safetensors file"),
    "weights-garbage": (_weights_bytes(lambda b: bytes(range(256)) * 8), WEIGHTS, "not a readable safetensors file"),
    "weights-bad-header": (_weights_bytes(lambda b: (9).to_bytes(8, "little") + b"{not json"), WEIGHTS,
                           "not a readable safetensors file"),
    "config-invalid-json": (_raw_config(b'{"r": 4,'), CONFIG, "not readable JSON"),
    "config-list": (_raw_config(b"[1, 2, 3]"), CONFIG, "holds a JSON list, an object is needed"),
    "config-number": (_raw_config(b"42"), CONFIG, "holds a JSON int"),
    "config-not-utf8": (_raw_config(b'{"r": "\xff\xfe"}'), CONFIG, "not readable JSON (UnicodeDecodeError"),
    "config-zero-bytes": (_raw_config(b""), CONFIG, "not readable JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_refused_by_every_command(case, good, tiny_sub, save_adapter, tmp_path, work):
    make, file, phrase = BAD_ADAPTERS[case]
    bad = make(save_adapter, tmp_path)
    line = refused_leaving_nothing(work, ("build", good[0], bad, "-o", work / "sub", "-k", 2), phrase)
    assert f"{bad}/{file}" in line or f"{bad / file}" in line, line
    assert refused_leaving_nothing(work, ("project", tiny_sub, bad, "-o", work / "u.npz"), phrase) == line
    assert refused(run("inspect", bad), phrase) == line  # inspect reads through the same reader


def test_peft_itself_refuses_what_kind_2_refuses(save_adapter, tmp_path, tiny_model):
    """The cross-checks follow PEFT: it will not load a config r that disagrees with the tensors, nor r 0."""
    from peft import PeftModel

    src = save_adapter("bert", weight_seed=12)
    for name, values in (("r16", {"r": 16}), ("r0", {"r": 0})):
        with pytest.raises((RuntimeError, ValueError)):
            PeftModel.from_pretrained(tiny_model("bert"), copy_adapter(src, tmp_path / name, config=values))


# ------------------------------------------------------------------ kind 1: what is carried, counted, degenerate

def test_saved_head_is_carried_and_counted(save_adapter, tiny_sub, tmp_path):
    path = save_adapter("bert", weight_seed=13, modules_to_save=["classifier"])
    info = read_adapter(path)
    assert info.head_module == "classifier" and set(info.head) == {"weight", "bias"}
    assert info.tensors == len(load_file(str(path / WEIGHTS))) == 2 * len(info.modules) + 2
    raw = load_file(str(path / WEIGHTS))
    head = read_head(info)
    np.testing.assert_array_equal(head[names.HEAD_WEIGHT_T], raw["base_model.model.classifier.weight"].T)
    np.testing.assert_array_equal(head[names.HEAD_BIAS], raw["base_model.model.classifier.bias"])
    user = project_adapter(read_subspace(tiny_sub), path).coeffs
    np.testing.assert_array_equal(user.head[names.HEAD_WEIGHT_T], head[names.HEAD_WEIGHT_T])
    inspected = json.loads(run("inspect", path, "--json").stdout)
    assert inspected["tensors"] == {"total": info.tensors, "lora_factors": 2 * len(info.modules), "head": 2}
    assert inspected["head"] == "classifier"


def test_head_without_bias_is_carried_with_zero_bias(save_adapter):
    """GPT-2's `score` head has no bias: carried as weight + zeros, not dropped."""
    info = read_adapter(save_adapter("gpt2", weight_seed=13, modules_to_save=["score"]))
    assert info.head_module == "score" and set(info.head) == {"weight"}
    head = read_head(info)
    assert head[names.HEAD_BIAS].shape == (2,) and not head[names.HEAD_BIAS].any()


def test_untrained_adapter_is_degenerate_for_build_and_project(save_adapter, good, tiny_sub, work):
    """PEFT's default init has lora_B = 0: ΔW = 0, so project would report 0/0 as a perfect 0.0."""
    untrained = save_adapter("bert", weight_seed=14, init_lora_weights=True)
    refused_leaving_nothing(work, ("build", good[0], untrained, "-o", work / "sub"), "lora_B all zero, so ΔW = 0")
    refused_leaving_nothing(work, ("project", tiny_sub, untrained, "-o", work / "u.npz"), "ΔW is zero in every module")


@pytest.mark.parametrize("content", [b"[1]", b"{bad", b'{"labels": "negative"}', b'{"labels": [1, 2]}'])
def test_bad_training_json_beside_an_adapter(content, good, tiny_sub, tmp_path, work):
    adapter = write_bytes(good[1], tmp_path / "a", names.TRAINING_JSON, content)
    refused_leaving_nothing(work, ("project", tiny_sub, adapter, "-o", work / "u.npz"), f"{adapter / names.TRAINING_JSON}")


# ------------------------------------------------------------------------------ kind 4: damaged subspace folders

def _refingerprinted(cfg: dict, sub: Path) -> dict:
    cfg["fingerprint"] = fingerprint_tensors(load_file(str(sub / names.SUBSPACE_WEIGHTS)), cfg)
    return cfg


def _swap_components(sub: Path):
    tensors = load_file(str(sub / names.SUBSPACE_WEIGHTS))
    key = f"{Q0}.components_A"
    tensors[key] = tensors[key][:2].copy()  # K=2 rows while components_B keeps 3 columns
    save_file(tensors, str(sub / names.SUBSPACE_WEIGHTS))
    cfg = json.loads((sub / names.SUBSPACE_CONFIG).read_text())
    return json.dumps(_refingerprinted(cfg, sub)).encode()


BAD_SUBSPACES = {  # name: (file, new content from (old bytes, folder), phrase)
    "weights-truncated": (names.SUBSPACE_WEIGHTS, lambda b, s: b[: len(b) // 2], "not a readable safetensors file"),
    "weights-zero-bytes": (names.SUBSPACE_WEIGHTS, lambda b, s: b"", "not a readable safetensors file"),
    "weights-garbage": (names.SUBSPACE_WEIGHTS, lambda b, s: b"\x00" * 64, "not a readable safetensors file"),
    "config-list": (names.SUBSPACE_CONFIG, lambda b, s: b"[]", "holds a JSON list"),
    "config-invalid": (names.SUBSPACE_CONFIG, lambda b, s: b[:-20], "not readable JSON"),
    "config-not-utf8": (names.SUBSPACE_CONFIG, lambda b, s: b"\xff" + b, "not readable JSON"),
    "modules-a-list": (names.SUBSPACE_CONFIG, lambda b, s: _edit_json(b, modules=[]), "modules is missing or not a dict"),
    "base-model-number": (names.SUBSPACE_CONFIG, lambda b, s: _edit_json(b, base_model=7), "base_model is missing"),
    "format-version-string": (names.SUBSPACE_CONFIG, lambda b, s: _edit_json(b, format_version="1"),
                              "format_version 1 unsupported"),
    "components-misfit": (names.SUBSPACE_CONFIG, lambda b, s: _swap_components(s), "which do not fit"),
}


def _edit_json(data: bytes, **values) -> bytes:
    return json.dumps({**json.loads(data), **values}).encode()


@pytest.mark.parametrize("case", sorted(BAD_SUBSPACES))
def test_damaged_subspace_refused_naming_the_file(case, good, tiny_sub, tmp_path, work):
    file, make, phrase = BAD_SUBSPACES[case]
    sub = shutil.copytree(tiny_sub, tmp_path / "sub")
    (sub / file).write_bytes(make((sub / file).read_bytes(), sub))
    line = refused_leaving_nothing(work, ("project", sub, good[0], "-o", work / "u.npz"), phrase)
    assert str(sub) in line
    assert refused(run("inspect", sub), phrase) == line
    refused_leaving_nothing(work, ("train", "--subspace", sub, "--data", "vader:tweets-binary", "-o", work / "u.npz"),
                            phrase)


# -------------------------------------------------------------------------------------- kind 3: options

BUILD_OPTIONS = [  # (args, named, exit code): click's static ranges exit 2, the library's checks 1
    (["-k", 0], "'--components' / '-k'", 2), (["-k", -3], "'--components' / '-k'", 2),
    (["--explained-variance", 0], "'--explained-variance'", 2), (["--explained-variance", 1.5], "'--explained-variance'", 2),
    (["--explained-variance", -0.5], "'--explained-variance'", 2), (["--explained-variance", "inf"], "'--explained-variance'", 2),
    (["--explained-variance", "nan"], "--explained-variance nan", 1), (["--augment", -2], "'--augment'", 2),
    (["--seed", -1], "'--seed'", 2), (["-k", "x"], "'--components' / '-k'", 2),
]


@pytest.mark.parametrize("args, named, code", BUILD_OPTIONS)
def test_build_options_range_checked(args, named, code, good, work):
    refused_leaving_nothing(work, ("build", *good, "-o", work / "sub", *args), named, code=code)


def test_build_k_beyond_the_stack_is_refused_before_writing(good, work):
    line = refused_leaving_nothing(work, ("build", *good, "-o", work / "sub", "-k", 40), "K=40 exceeds the rank")
    assert "--augment" in line


TRAIN_OPTIONS = [
    (["--k", 0], "'--k'", 2), (["--k", 100], "--k 100: the subspace has K=2", 1), (["--k", 3], "--k 3", 1),
    (["--rank", 0], "'--rank'", 2), (["--rank", 100], "--rank 100: the subspace's r is", 1),
    (["--steps", 0], "'--steps'", 2), (["--steps", -5], "'--steps'", 2),
    (["--epochs", 0], "'--epochs'", 2), (["--epochs", -1], "'--epochs'", 2), (["--epochs", "nan"], "--epochs nan", 1),
    (["--batch-size", 0], "'--batch-size'", 2), (["--max-length", 0], "'--max-length'", 2),
    (["--max-length", -5], "'--max-length'", 2), (["--max-length", 600], "--max-length 600", 1),
    (["--lr", 0], "'--lr'", 2), (["--lr", -1], "'--lr'", 2), (["--lr", "nan"], "--lr nan", 1),
    (["--patience", -1], "'--patience'", 2), (["--seed", -1], "'--seed'", 2),
]


@pytest.mark.parametrize("args, named, code", TRAIN_OPTIONS)
def test_train_options_range_checked_before_any_model_load(args, named, code, minilm_sub, work, monkeypatch):
    monkeypatch.setattr("edge_lorax.builder.train.load_for_task", _no_load)
    refused_leaving_nothing(work, ("train", "--subspace", minilm_sub, "--data", "vader:tweets-binary", "-o",
                                   work / "u.npz", *args), named, code=code)


TRAIN_LORA_OPTIONS = [
    (["--rank", 0], "'--rank'", 2), (["--alpha", 0], "'--alpha'", 2), (["--alpha", "nan"], "--alpha nan", 1),
    (["--lr", 0], "'--lr'", 2), (["--threads", 0], "'--threads'", 2), (["--steps", 0], "'--steps'", 2),
    (["--batch-size", -1], "'--batch-size'", 2), (["--max-length", 513], "--max-length 513", 1),
    (["--targets", ","], "--targets is empty", 1),
]


@pytest.mark.parametrize("args, named, code", TRAIN_LORA_OPTIONS)
def test_train_lora_options_range_checked_before_any_model_load(args, named, code, work, monkeypatch):
    monkeypatch.setattr("edge_lorax.builder.baselines.load_for_task", _no_load)
    refused_leaving_nothing(work, ("train-lora", "--data", "vader:tweets-binary", "-o", work / "a", *args), named, code=code)


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the options were checked")


def test_max_positions_come_from_the_model():
    from edge_lorax.builder.models import default_model_path, max_positions

    assert max_positions(default_model_path()) == 512


@pytest.mark.parametrize("command", ["build", "project", "train", "train-lora", "reconstruct", "merged"])
@pytest.mark.parametrize("where", ["parent-is-a-file", "read-only-tree"])
def test_unwritable_output_refused_before_the_work(command, where, good, tiny_sub, minilm_sub, work, monkeypatch):
    monkeypatch.setattr("edge_lorax.builder.train.load_for_task", _no_load)
    monkeypatch.setattr("edge_lorax.builder.merge.load_model", _no_load)
    monkeypatch.setattr("edge_lorax.builder.baselines.load_for_task", _no_load)
    (work / "afile").write_text("x")
    out = work / "afile" / "out" if where == "parent-is-a-file" else Path("/proc/edge-lorax-test/out")
    user = work / "u.npz"
    assert run("project", tiny_sub, good[0], "-o", user).exit_code == 0
    args = {"build": ("build", *good, "-o", out, "-k", 2), "project": ("project", tiny_sub, good[0], "-o", out),
            "train": ("train", "--subspace", minilm_sub, "--data", "vader:tweets-binary", "-o", out),
            "train-lora": ("train-lora", "--data", "vader:tweets-binary", "-o", out),
            "reconstruct": ("reconstruct", tiny_sub, user, "-o", out),
            "merged": ("reconstruct", tiny_sub, user, "-o", work / "rec", "--merged-model", out)}[command]
    refused_leaving_nothing(work, args, f"{out}: cannot ")


# ------------------------------------------------------------------------- kind 6: one module-name rule

def _bare(key: str) -> str:
    return key.replace("base_model.model.bert.", "base_model.model.")


def _no_peft_prefix(key: str) -> str:
    return key.removeprefix("base_model.model.")


@pytest.mark.parametrize("rename", [_bare, _no_peft_prefix, lambda k: _no_peft_prefix(_bare(k))],
                         ids=["bare-backbone", "no-peft-prefix", "both"])
def test_renamed_adapters_are_the_same_adapter_to_build_and_project(rename, good, tiny_sub, tmp_path):
    renamed = rename_keys(good[1], tmp_path / "renamed", rename)
    sub = read_subspace(tiny_sub)
    want, got = project_adapter(sub, good[1]), project_adapter(sub, renamed)
    assert got.coeffs.coefficients.keys() == want.coeffs.coefficients.keys()
    for key, value in want.coeffs.coefficients.items():
        np.testing.assert_array_equal(got.coeffs.coefficients[key], value)
    built, mixed = build_subspace(good, components=3), build_subspace([good[0], renamed, good[2]], components=3)
    assert mixed.modules.keys() == built.modules.keys()
    for module, ms in built.modules.items():
        np.testing.assert_array_equal(mixed.modules[module].components_A, ms.components_A)


def test_a_subspace_of_bare_names_injects_into_task_and_bare_models(good, tmp_path):
    from transformers import BertModel

    from edge_lorax.builder.inject import inject_subspace

    bare = [rename_keys(g, tmp_path / f"bare{i}", _bare) for i, g in enumerate(good)]
    sub = build_subspace(bare, components=2)
    assert next(iter(sub.modules)).startswith("encoder.layer.")
    task_model = build_tiny_model("bert")
    assert set(inject_subspace(task_model, sub)) == set(sub.modules)
    assert set(inject_subspace(BertModel(task_model.config), sub)) == set(sub.modules)


def test_module_differences_name_the_first_module(good, tiny_sub, save_adapter, work):
    query_only = save_adapter("bert", weight_seed=15, target_modules=["query"])
    line = refused_leaving_nothing(work, ("project", tiny_sub, query_only, "-o", work / "u.npz"),
                                   "2 module(s) of the subspace not in the adapter (first: "
                                   "bert.encoder.layer.0.attention.self.value)")
    assert "targets 2 modules, the subspace" not in line
    keys = save_adapter("bert", weight_seed=15, target_modules=["query", "key"])
    refused_leaving_nothing(work, ("build", good[0], keys, "-o", work / "sub"),
                            "2 module(s) of this adapter not in the first (first: bert.encoder.layer.0.attention.self.key)")


# ---------------------------------------------------------------------- kind 10: pickled model folders

@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pickled") / "tiny-random-bert"
    model = build_tiny_model("bert")
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # what older transformers wrote by default
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def test_pickled_model_folder_refused_with_the_conversion(pickled_model, minilm_sub, work, monkeypatch):
    monkeypatch.setattr(torch, "load", _no_load)  # nothing may unpickle on the way to the refusal
    line = refused_leaving_nothing(work, ("train", "--subspace", minilm_sub, "--data", "vader:tweets-binary",
                                          "--model", pickled_model, "-o", work / "u.npz"), "pytorch_model.bin")
    assert "pickled weights are never loaded" in line and "weights_only=True" in line
    refused_leaving_nothing(work, ("train-lora", "--data", "vader:tweets-binary", "--model", pickled_model,
                                   "-o", work / "a"), "pytorch_model.bin")


def test_the_conversion_command_works(pickled_model, tmp_path):
    from edge_lorax.builder.models import load_model, resolve_model

    folder = shutil.copytree(pickled_model, tmp_path / "tiny-random-bert")
    with pytest.raises(InputError, match="pickled weights are never loaded") as err:
        resolve_model(str(folder))
    command = str(err.value).split("where you trust the file: ", 1)[1].removeprefix("python ")
    done = subprocess.run(f"{sys.executable} {command}", shell=True, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model = load_model(resolve_model(str(folder)), 2)
    reference = build_tiny_model("bert")
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)


@pytest.mark.parametrize("config", [b"[]", b"{oops", b""])
def test_model_config_damaged(config, pickled_model, tmp_path):
    from edge_lorax.builder.models import resolve_model

    folder = write_bytes(pickled_model, tmp_path / "m", "config.json", config)
    with pytest.raises(InputError, match=f"{folder / 'config.json'}: "):
        resolve_model(str(folder))


# ------------------------------------------------------------------ kind 1: the merged model carries the head

@pytest.fixture(scope="module")
def merged_setup(planted_adapters, tmp_path_factory):
    """A tiny BERT folder, a subspace of its planted adapters and a user with a 2-label head and its own labels."""
    folder = tmp_path_factory.mktemp("model") / "tiny-random-bert"
    build_tiny_model("bert").save_pretrained(folder)
    dirs, _ = planted_adapters("bert", n=6, k=3)
    sub = build_subspace(dirs, components=3)
    user = random_user(sub, 5, labels=2)
    return folder, sub, replace(user, meta={**user.meta, "labels": ["ham", "spam"], "kind": "classification"})


def _user_logits(folder, sub, user, ids):
    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_model, write_head

    net = load_model(folder, 2)
    inject_subspace(net, sub, coeffs=user.coefficients)
    write_head(net, user.head)
    with torch.no_grad():
        return net(input_ids=ids).logits


def test_merged_model_carries_head_and_labels(merged_setup, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from edge_lorax.builder.merge import save_merged_model

    folder, sub, user = merged_setup
    merged = save_merged_model(str(folder), sub, user, tmp_path / "merged")
    assert "classifier (2 outputs, labels ham, spam)" in merged.head
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert reloaded.config.id2label == {0: "ham", 1: "spam"}
    ids = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    want = _user_logits(folder, sub, user, ids)
    assert want.abs().max() > 1e-2  # a real head, not zeros
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_merged_model_without_a_head_says_so(merged_setup, tmp_path):
    from edge_lorax.builder.merge import save_merged_model

    folder, sub, user = merged_setup
    merged = save_merged_model(str(folder), sub, replace(user, head={}), tmp_path / "bare")
    assert merged.head.startswith("none: the user has no task head")
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["architectures"] == ["BertModel"]


def test_reconstruct_cli_reports_the_merged_head(merged_setup, tmp_path):
    from edge_lorax.formats.subspace import write_subspace
    from edge_lorax.formats.user import write_user

    folder, sub, user = merged_setup
    write_subspace(sub, tmp_path / "sub")
    write_user(user, tmp_path / "u.npz")
    result = run("reconstruct", tmp_path / "sub", tmp_path / "u.npz", "-o", tmp_path / "rec", "--merged-model",
                 tmp_path / "merged", "--model", folder)
    assert result.exit_code == 0, result.output
    assert "merged_head: classifier (2 outputs, labels ham, spam)" in result.stdout


def test_merged_model_refuses_a_head_of_another_width(merged_setup, tmp_path):
    from edge_lorax.builder.merge import save_merged_model

    folder, sub, user = merged_setup
    wide = {names.HEAD_WEIGHT_T: np.zeros((48, 2), np.float32), names.HEAD_BIAS: np.zeros(2, np.float32)}
    with pytest.raises(InputError, match=r"the user's head is \(2, 48\)"):
        save_merged_model(str(folder), sub, replace(user, head=wide), tmp_path / "m")
    assert not (tmp_path / "m").exists()


# -------------------------------------------------------------------------- the shared case files, as they are

SHARED_REFUSED = {
    "bias_lora_only": "trained biases (bias='lora_only' or 'all'): 12",
    "embedding_lora": "embedding LoRA factors (lora_embedding_A/B): 2",
    "config_r_disagrees_with_weights": "rank-8 lora_A/lora_B but adapter_config.json says r=16",
    "int8_weights": "is I8; integer or quantized LoRA weights",
    "truncated_safetensors": "not a readable safetensors file",
    "config_is_a_list": "holds a JSON list, an object is needed",
    "negative_alpha": "lora_alpha -16 is negative",
}
needs_cases = pytest.mark.skipif(not CASES.is_dir(), reason="tests/cases/adapters is missing from this checkout")


@needs_cases
def test_every_shared_case_is_covered():
    assert {p.name for p in CASES.iterdir()} == set(SHARED_REFUSED) | {"bare_backbone_module_names"}


@needs_cases
@pytest.mark.parametrize("case", sorted(SHARED_REFUSED))
def test_shared_case_refused(case, minilm_sub, work):
    bad = CASES / case
    line = refused_leaving_nothing(work, ("build", REPO / "adapters" / "tweets-binary", bad, "-o", work / "s", "-k", 4),
                                   SHARED_REFUSED[case])
    assert str(bad) in line
    assert refused_leaving_nothing(work, ("project", minilm_sub, bad, "-o", work / "u.npz"), SHARED_REFUSED[case]) == line
    assert refused(run("inspect", bad), SHARED_REFUSED[case]) == line


@needs_cases
def test_shared_bare_backbone_case_is_projected_like_its_prefixed_twin(minilm_sub, tmp_path):
    bare = CASES / "bare_backbone_module_names"
    twin = rename_keys(bare, tmp_path / "twin", lambda k: k.replace("base_model.model.", "base_model.model.bert."))
    sub = read_subspace(minilm_sub)
    got, want = project_adapter(sub, bare), project_adapter(sub, twin)
    assert got.overall == want.overall and got.coeffs.coefficients.keys() == set(want.coeffs.coefficients)
    result = run("project", minilm_sub, bare, "-o", tmp_path / "u.npz")
    assert result.exit_code == 0 and "relative_error" in result.stdout, result.output
    info = read_adapter(bare)
    assert read_factors(info, info.modules[0])[0].shape == (8, 384)


# ------------------------------------------------------------------------------------------ kind 4: data files

@pytest.mark.parametrize("name, content, phrase", [
    ("latin1.csv", b"text,label\ncaf\xe9 ok,1\nbad,0\n", "not UTF-8"),
    ("deep.jsonl", b'{"text": ' + b"[" * 100_000 + b"}\n", "not JSON (nested too deeply)"),
])
def test_undecodable_data_file_is_one_line(name, content, phrase, minilm_sub, work):
    data = work.parent / name
    data.write_bytes(content)
    refused(run("data", data), f"{data}", phrase)
    refused_leaving_nothing(work, ("train", "--subspace", minilm_sub, "--data", data, "-o", work / "u.npz"), phrase)
