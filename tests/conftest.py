"""Shared fixtures: tiny random BERT and GPT-2 models, and real PEFT adapters saved from them.

`tiny_model(arch, seed)` builds the same weights for the same (arch, seed), so a test can rebuild the base that an
adapter was saved from. `save_adapter(arch, seed, **kw)` runs `get_peft_model(...).save_pretrained` with
`init_lora_weights=False` (non-zero B) and returns the folder; any PEFT config can be passed instead of LoRA
keywords (VeRA, IA3, DoRA refusals). `planted_adapters` writes LoRA folders whose factors lie in a known subspace.
Plain helpers (`from conftest import ...`): in_span_factors, token_batch, model_outputs, corrupt_copy.
Offline: HF_HUB_OFFLINE is set before transformers is imported; numpy's OpenBLAS runs one thread.
"""

import itertools
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy's OpenBLAS spins its threads: on a shared 2-core machine a 512x512 eigh ran 70x slower with 2 threads than
# with 1. Tests use small matrices, so one thread is also the fastest. Set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

VOCAB = 100
BASE_IDS = {"bert": "edge-lorax/tiny-random-bert", "gpt2": "edge-lorax/tiny-random-gpt2"}
TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn", "c_fc"]}


def pytest_configure(config):
    """PEFT warns that a tiny model's id is not on the hub (we are offline on purpose)."""
    config.addinivalue_line("filterwarnings", "ignore:Could not find a config file in:UserWarning")


def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def tiny_config(arch: str, hidden: int = 32):
    """A 2-layer random config: BERT (Linear q/k/v, 2 labels) or GPT-2 (Conv1D c_attn/c_fc, 2 labels)."""
    from transformers import BertConfig, GPT2Config

    if arch == "bert":
        return BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=2)
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=2, n_head=2, n_positions=64, num_labels=2,
                          pad_token_id=0)
    raise ValueError(f"unknown arch {arch!r}; use 'bert' or 'gpt2'")


def build_tiny_model(arch: str = "bert", seed: int = 0, hidden: int = 32, base_id: str | None = None):
    """Same (arch, seed, hidden) -> same weights; eval mode; `name_or_path` is a portable id PEFT writes to configs."""
    from transformers import BertForSequenceClassification, GPT2ForSequenceClassification

    _quiet()
    torch.manual_seed(seed)
    cls = BertForSequenceClassification if arch == "bert" else GPT2ForSequenceClassification
    model = cls(tiny_config(arch, hidden)).eval()
    model.config._name_or_path = base_id or BASE_IDS[arch]
    model.name_or_path = model.config._name_or_path
    return model


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: tiny_model(arch="bert"|"gpt2", seed=0, hidden=32, base_id=None) -> a fresh model in eval mode."""
    return build_tiny_model


def lora_kwargs(arch: str, **overrides) -> dict:
    """LoraConfig keywords: r=4, alpha=8, the arch's targets, non-zero init, fan_in_fan_out for GPT-2's Conv1D."""
    kw = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS[arch], "init_lora_weights": False,
          "fan_in_fan_out": arch == "gpt2"}
    kw.update(overrides)
    return kw


@pytest.fixture(scope="session")
def save_adapter(tmp_path_factory):
    """Factory: save_adapter(arch="bert", seed=0, *, peft_config=None, hidden=32, base_id=None, safe=True,
    weight_seed=None, **lora_overrides) -> folder written by PEFT's save_pretrained.

    The base is tiny_model(arch, seed); adapter weights come from torch seed `weight_seed` (default seed + 1000).
    Identical calls return the same cached folder; treat it as read-only (copy it before editing)."""
    from peft import LoraConfig, get_peft_model

    root, cache, counter = tmp_path_factory.mktemp("peft_adapters"), {}, itertools.count()

    def save(arch="bert", seed=0, *, peft_config=None, hidden=32, base_id=None, safe=True, weight_seed=None,
             **overrides) -> Path:
        key = (arch, seed, repr(peft_config), hidden, base_id, safe, weight_seed, repr(sorted(overrides.items())))
        if key not in cache:
            model = build_tiny_model(arch, seed, hidden, base_id)
            torch.manual_seed(seed + 1000 if weight_seed is None else weight_seed)
            config = peft_config or LoraConfig(**lora_kwargs(arch, **overrides))
            path = root / f"{arch}-{next(counter)}"
            get_peft_model(model, config).save_pretrained(path, safe_serialization=safe)
            cache[key] = path
        return cache[key]

    return save


def planted_basis(rng: np.random.Generator, dim: int, k: int) -> np.ndarray:
    """(k, dim) orthonormal rows."""
    return np.linalg.qr(rng.standard_normal((dim, k)))[0].T


@pytest.fixture(scope="session")
def planted_adapters(tmp_path_factory):
    """Factory: planted_adapters(arch="bert", n=6, k=3, ranks=(2, 3), seed=0) -> (dirs, bases).

    Every adapter's A rows lie in span(bases[module]["A"]) (k, in) and its B columns in span(bases[module]["B"].T)
    (out, k), for every target module of the tiny model (written with edge_lorax.peft_io.write_adapter, scaling 1).
    Ranks cycle through `ranks`. Same arguments -> same folders."""
    from edge_lorax.inject import layer_shape
    from edge_lorax.peft_io import write_adapter

    root, cache = tmp_path_factory.mktemp("planted"), {}

    def make(arch="bert", n=6, k=3, ranks=(2, 3), seed=0):
        key = (arch, n, k, tuple(ranks), seed)
        if key in cache:
            return cache[key]
        folder = root / f"{arch}-{len(cache)}"
        model, rng = build_tiny_model(arch), np.random.default_rng(seed)
        modules = sorted(name for name, m in model.named_modules()
                         if name.rsplit(".", 1)[-1] in TARGETS[arch] and hasattr(m, "weight"))
        shapes = {m: layer_shape(model.get_submodule(m)) for m in modules}
        bases = {m: {"A": planted_basis(rng, shapes[m][1], k), "B": planted_basis(rng, shapes[m][0], k)} for m in modules}
        dirs = []
        for i in range(n):
            r = ranks[i % len(ranks)]
            factors = {m: (rng.standard_normal((r, k)) @ bases[m]["A"], bases[m]["B"].T @ rng.standard_normal((k, r)))
                       for m in modules}
            dirs.append(write_adapter(folder / f"adapter-{i}", factors, BASE_IDS[arch], fan_in_fan_out=arch == "gpt2"))
        cache[key] = (dirs, bases)
        return cache[key]

    return make


def in_span_factors(bases: dict, r: int, seed: int) -> dict:
    """{module: (A (r, in), B (out, r))} inside the planted subspace: a held-out adapter that projects exactly."""
    rng = np.random.default_rng(seed)
    return {m: (rng.standard_normal((r, b["A"].shape[0])) @ b["A"], b["B"].T @ rng.standard_normal((b["B"].shape[0], r)))
            for m, b in bases.items()}


def token_batch(batch: int = 3, length: int = 7, seed: int = 0) -> torch.Tensor:
    """Random token ids (never 0, the GPT-2 pad id here)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=gen)


def model_outputs(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """Last hidden states (B, T, H) of a *ForSequenceClassification model, no grad: they carry every adapted layer's
    effect at full scale (the tiny random heads give logits of ~1e-2)."""
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True, **kwargs).hidden_states[-1]


def corrupt_copy(src, dst, key_suffix: str, value):
    """Copy an adapter folder and set one element of the tensor whose key ends with key_suffix."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith(key_suffix))
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = value
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    return dst
