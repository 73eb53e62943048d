"""Issue 25 cause 6: an adapter's config is checked against its tensors by PEFT's own rule.

Legitimate PEFT configs (layers_to_transform, layers_pattern, regex target_modules, all-linear, exclude_modules,
full names) saved by PEFT itself on tiny BERT / GPT-2 / Llama are read, hold exactly the modules PEFT targeted and
their ΔW; with the base model's module names (`ModelModules`) the reader's choice equals PEFT's
`targeted_module_names`. Configs edited to disagree with the tensors (target_modules, layers_to_transform,
layers_pattern, exclude_modules, modules_to_save, wrong types, invalid regexes, options PEFT refuses) are refused in
one line naming the config file, the key and the first module, from the library and from `build` / `project` /
`inspect` (exit 1, nothing written).
"""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_lorax.cli import cli
from edge_lorax.formats import names
from edge_lorax.formats.peft import AdapterError, ModelModules, delta_weight, peft_targets, read_adapter, write_adapter
from helpers import build_tiny_model, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CONFIG = names.ADAPTER_CONFIG
Q0, V1 = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.value"


def _model(arch: str):
    """A tiny task model PEFT adapts: BERT / GPT-2 for sequence classification, Llama as a causal LM."""
    if arch == "llama":
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_config("llama")).eval()
    return build_tiny_model(arch)


def model_modules(model, task_type=None) -> ModelModules:
    """The model's names and PEFT's own all-linear resolution of them (its _maybe_include_all_linear_layers)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    resolved = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear", task_type=task_type), model)
    return ModelModules(tuple(n for n, _ in model.named_modules()), frozenset(resolved.target_modules))


def saved(tmp_path, arch: str, name: str, **lora):
    """(folder, ModelModules, PEFT's targeted names, the PeftModel) of an adapter PEFT saves with these options."""
    from peft import LoraConfig, get_peft_model

    model = _model(arch)
    modules = model_modules(copy.deepcopy(model), lora.get("task_type"))
    torch.manual_seed(7)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, **lora))
    peft.save_pretrained(tmp_path / name)
    return tmp_path / name, modules, sorted(peft.base_model.targeted_module_names), peft


# ----------------------------------------------------------------------------- legitimate configs, read exactly

LEGIT = {
    "layers-to-transform-list": ("bert", {"target_modules": ["query", "value"], "layers_to_transform": [0]}),
    "layers-to-transform-int": ("bert", {"target_modules": ["query", "value"], "layers_to_transform": 1}),
    "layers-pattern": ("llama", {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1],
                                 "layers_pattern": "layers"}),
    "regex-string": ("bert", {"target_modules": r".*\.attention\.self\.(query|value)"}),
    "regex-one-layer": ("llama", {"target_modules": r"model\.layers\.0\.self_attn\.(q|k)_proj"}),
    "all-linear-bert": ("bert", {"target_modules": "all-linear", "task_type": "SEQ_CLS"}),
    "all-linear-gpt2": ("gpt2", {"target_modules": "all-linear", "task_type": "SEQ_CLS", "fan_in_fan_out": True}),
    "all-linear-llama": ("llama", {"target_modules": "all-linear"}),
    "exclude-list": ("bert", {"target_modules": ["query", "value"], "exclude_modules": ["layer.1.attention.self.value"]}),
    "exclude-regex": ("llama", {"target_modules": ["q_proj", "v_proj"], "exclude_modules": r".*\.0\..*"}),
    "full-names": ("bert", {"target_modules": [Q0, V1]}),
    "seq-cls-head": ("bert", {"target_modules": ["query"], "task_type": "SEQ_CLS"}),
}


@pytest.mark.parametrize("case", sorted(LEGIT))
def test_peft_configs_read_exactly(case, tmp_path):
    """Accepted with and without the model's names; the modules are PEFT's targets and ΔW is PEFT's."""
    arch, lora = LEGIT[case]
    folder, modules, targeted, peft = saved(tmp_path, arch, case, **lora)
    info = read_adapter(folder)
    assert list(info.modules) == targeted and read_adapter(folder, modules).modules == info.modules
    cfg = json.loads((folder / CONFIG).read_text())
    assert sorted(peft_targets(cfg, modules)) == targeted  # the reader's rule is PEFT's on every module of the model
    layers = dict(peft.base_model.model.named_modules())
    for module in (targeted[0], targeted[-1]):
        layer = layers[module]
        want = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach().numpy() * layer.scaling["default"]
        np.testing.assert_allclose(delta_weight(info, module), want, rtol=1e-5, atol=1e-7)


def test_write_adapter_output_is_accepted(tmp_path):
    """edge-lorax's own writer (full names, anchored rank patterns) passes the check."""
    rng = np.random.default_rng(0)
    factors = {Q0: (rng.standard_normal((2, 8)), rng.standard_normal((8, 2))),
               V1: (rng.standard_normal((3, 8)), rng.standard_normal((8, 3)))}
    assert read_adapter(write_adapter(tmp_path / "w", factors, "tiny")).modules == (Q0, V1)


# ---------------------------------------------------------------------------------- edited configs, refused

@pytest.fixture(scope="module")
def bert_qv(tmp_path_factory):
    """query/value on both layers of the tiny BERT, saved by PEFT; (folder, its ModelModules)."""
    folder, modules, _, _ = saved(tmp_path_factory.mktemp("qv"), "bert", "qv", target_modules=["query", "value"])
    return folder, modules


def edited(src, dst, **changes):
    """A copy of `src` whose adapter_config.json has `changes` (a value of ... deletes the key)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / CONFIG).read_text())
    for key, value in changes.items():
        if value is ...:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dst / CONFIG).write_text(json.dumps(cfg))
    return dst


Q1 = "bert.encoder.layer.1.attention.self.query"
V0 = "bert.encoder.layer.0.attention.self.value"
# case -> (config changes, words the one-line refusal must hold: the key and the first module that disagrees)
EDITED = {
    "targets-key": ({"target_modules": ["key"]}, ("target_modules", Q0)),
    "targets-query-only": ({"target_modules": ["query"]}, ("target_modules", V0)),
    "targets-other-family": ({"target_modules": ["q_proj", "v_proj"]}, ("target_modules", Q0)),
    "targets-partial-suffix": ({"target_modules": ["uery", "alue"]}, ("target_modules", Q0)),
    "layers-list": ({"layers_to_transform": [0]}, ("layers_to_transform", Q1)),
    "layers-int": ({"layers_to_transform": 1}, ("layers_to_transform", Q0)),
    "layers-out-of-range": ({"layers_to_transform": [5, 6]}, ("layers_to_transform", Q0)),
    "layers-pattern-absent": ({"layers_to_transform": [0, 1], "layers_pattern": "blocks"}, ("layers_pattern", Q0)),
    "regex-bare-name": ({"target_modules": "query"}, ("target_modules", Q0)),
    "regex-key": ({"target_modules": r".*\.key"}, ("target_modules", Q0)),
    "regex-layer-0": ({"target_modules": r".*\.0\.attention\.self\.(query|value)"}, ("target_modules", Q1)),
    "exclude-list": ({"exclude_modules": ["value"]}, ("exclude_modules", V0)),
    "exclude-regex": ({"exclude_modules": r".*query"}, ("exclude_modules", Q0)),
    "modules-to-save": ({"modules_to_save": ["attention"]}, ("modules_to_save", Q0)),
    "no-target-modules": ({"target_modules": ...}, ("no target_modules", "['query', 'value']")),
    "null-target-modules": ({"target_modules": None}, ("no target_modules",)),
    "targets-a-number": ({"target_modules": 5}, ("target_modules is 5",)),
    "targets-not-names": ({"target_modules": [1, 2]}, ("target_modules must list module names",)),
    "exclude-not-names": ({"exclude_modules": [None]}, ("exclude_modules must list module names",)),
    "layers-a-string": ({"layers_to_transform": "0"}, ("layers_to_transform is \"0\"",)),
    "layers-bool": ({"layers_to_transform": [True]}, ("layers_to_transform is [true]",)),
    "layers-negative": ({"layers_to_transform": [-1]}, ("layers_to_transform is [-1]",)),
    "layers-pattern-number": ({"layers_to_transform": [0], "layers_pattern": 3}, ("layers_pattern is 3",)),
    "regex-invalid": ({"target_modules": "(query"}, ("target_modules '(query' is not a valid regular expression",)),
    "exclude-regex-invalid": ({"exclude_modules": "["}, ("exclude_modules '[' is not a valid regular expression",)),
    "layers-pattern-invalid": ({"layers_to_transform": [0], "layers_pattern": "("}, ("layers_pattern",
                                                                                      "not a valid regular expression")),
    "save-invalid": ({"modules_to_save": ["cls("]}, ("modules_to_save", "not a valid regular expression")),
    "regex-with-layers": ({"target_modules": ".*query", "layers_to_transform": [0]}, ("regex string",
                                                                                      "layers_to_transform")),
    "pattern-without-layers": ({"layers_pattern": "layer"}, ("layers_pattern without layers_to_transform",)),
    "target-parameters": ({"target_parameters": ["mlp.experts.gate_up_proj"]}, ("target_parameters",)),
    "layer-replication": ({"layer_replication": [[0, 2]]}, ("layer_replication",)),
    "task-type-number": ({"task_type": 3}, ("task_type is 3",)),
    # regexes whose backtracking would hang the reader (and PEFT): refused before any match
    "regex-nested": ({"target_modules": "(.*)*x"}, ("target_modules '(.*)*x' is too costly", "a repeat or an alternation inside a repeat")),
    "regex-overlapping-branch": ({"target_modules": r"(.|\w)*x"}, ("too costly",)),
    "regex-many-repeats": ({"target_modules": ".*" * 8 + "x"}, ("too costly", "8 unbounded repeats with PEFT's own, at most 3")),
    "regex-too-long": ({"target_modules": "a" * 1001}, ("too costly", "1001 characters, at most 1000")),
    "exclude-nested": ({"exclude_modules": "(a+)+b"}, ("exclude_modules", "too costly")),
    "pattern-nested": ({"layers_to_transform": [0], "layers_pattern": "(.*)*"}, ("layers_pattern", "too costly")),
    "save-nested": ({"modules_to_save": ["(x+)+"]}, ("modules_to_save", "too costly")),
}


@pytest.mark.parametrize("case", sorted(EDITED))
def test_edited_configs_refused(case, bert_qv, tmp_path):
    changes, words = EDITED[case]
    folder = edited(bert_qv[0], tmp_path / case, **changes)
    for model in (None, bert_qv[1]):
        with pytest.raises(AdapterError) as err:
            read_adapter(folder, model)
        message = str(err.value)
        assert "\n" not in message and str(folder / CONFIG) in message, message
        if model is None:
            assert all(w in message for w in words), message


KEYS = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save", "rank_pattern",
        "alpha_pattern", "task_type", "target_parameters", "layer_replication")
NAMES = st.sampled_from(["query", "value", "key", "layer", "layers", "all-linear", ".*", "(", "[0-9]+", "\\", "classifier",
                         "SEQ_CLS", ""])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), NAMES, st.text(max_size=8),
                   st.lists(st.one_of(st.integers(-1, 3), NAMES, st.none()), max_size=3),
                   st.dictionaries(NAMES, st.one_of(st.integers(-1, 9), NAMES), max_size=2))


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3))
def test_any_values_of_these_keys_read_or_refuse_in_one_line(changes, bert_qv, tmp_path_factory):
    """Whatever these keys hold, read_adapter reads the folder or raises AdapterError (one line), nothing else."""
    folder = edited(bert_qv[0], tmp_path_factory.mktemp("fuzz") / "a", **changes)
    for model in (None, bert_qv[1]):
        try:
            read_adapter(folder, model)
        except AdapterError as e:
            assert "\n" not in str(e)


def test_module_name_too_long_to_match_is_refused(tmp_path):
    """A 250-character module name (no model has one) is refused before any regex runs on it."""
    rng = np.random.default_rng(2)
    name = "bert." + "x" * 245
    write_adapter(tmp_path / "a", {name: (rng.standard_normal((2, 8)), rng.standard_normal((8, 2)))}, "tiny")
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: module name of 250 characters"):
        read_adapter(tmp_path / "a")


def test_seq_cls_task_keeps_lora_off_the_head(tmp_path):
    """task_type SEQ_CLS: PEFT's classification model adds classifier/score to modules_to_save, so LoRA tensors on
    `classifier` cannot come from PEFT."""
    rng = np.random.default_rng(1)
    factors = {Q0: (rng.standard_normal((2, 8)), rng.standard_normal((8, 2))),
               "classifier": (rng.standard_normal((2, 8)), rng.standard_normal((2, 2)))}
    write_adapter(tmp_path / "a", factors, "tiny", task_type="SEQ_CLS")
    with pytest.raises(AdapterError, match=r'modules_to_save \["classifier", "score"\] \(with task_type SEQ_CLS.s heads\) '
                                           r"does not take module classifier"):
        read_adapter(tmp_path / "a")
    write_adapter(tmp_path / "b", factors, "tiny")  # no task type: PEFT targets it as listed
    assert "classifier" in read_adapter(tmp_path / "b").modules


# ------------------------------------------------------------------- with the base model: exactly PEFT's modules

EXACT_ONLY = {  # configs that target more than the tensors hold: only the model's names can tell
    "targets-key-too": {"target_modules": ["query", "key", "value"]},
    "layers-one-more": {"target_modules": ["query", "value"], "layers_to_transform": [0, 1]},
    "all-linear": {"target_modules": "all-linear", "layers_to_transform": None},
}


@pytest.mark.parametrize("case", sorted(EXACT_ONLY))
def test_more_targets_than_tensors_refused_with_the_model(case, tmp_path):
    """Tensors on layer 0's query/value only; the config names more. Without the model it passes (documented)."""
    folder, modules, _, _ = saved(tmp_path, "bert", "src", target_modules=["query", "value"], layers_to_transform=[0])
    folder = edited(folder, tmp_path / case, **EXACT_ONLY[case])
    assert read_adapter(folder).modules == (Q0, V0)
    with pytest.raises(AdapterError, match=r"select \d+ module\(s\) of the base model, the weights hold 2 .*first: "):
        read_adapter(folder, modules)


def test_bare_backbone_names_match_under_the_naming_rule(tmp_path):
    """A LoRA trained on the bare BertModel (encoder.layer.N...) read against BertForSequenceClassification's
    names (bert.encoder.layer.N...): the same layers under the one naming rule."""
    from peft import LoraConfig, get_peft_model

    model = build_tiny_model("bert")
    names_ = model_modules(copy.deepcopy(model))
    get_peft_model(model.bert, LoraConfig(r=2, target_modules=["query", "value"])).save_pretrained(tmp_path / "bare")
    assert read_adapter(tmp_path / "bare", names_).modules[0] == "encoder.layer.0.attention.self.query"


# --------------------------------------------------------------------------------------- the CLI: one line, exit 1

def _one_line(result, *words):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("case", ["targets-key", "layers-list", "regex-key", "exclude-list"])
def test_cli_refuses_and_writes_nothing(case, bert_qv, tmp_path):
    changes, words = EDITED[case]
    bad = edited(bert_qv[0], tmp_path / case, **changes)
    good = bert_qv[0]
    _one_line(CliRunner().invoke(cli, ["build", str(good), str(bad), "-o", str(tmp_path / "sub"), "-k", "2"]), *words)
    _one_line(CliRunner().invoke(cli, ["inspect", str(bad)]), *words)
    assert CliRunner().invoke(cli, ["build", str(good), "-o", str(tmp_path / "ok"), "-k", "2"]).exit_code == 0
    _one_line(CliRunner().invoke(cli, ["project", str(tmp_path / "ok"), str(bad), "-o", str(tmp_path / "u.npz")]),
              *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([case, "ok"])
