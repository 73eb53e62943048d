"""Fixtures, in one place: tiny random models, real PEFT adapters saved from them, planted subspaces, and the
runtime's tiny set-up and bundle. Plain helpers live in the `helpers` package beside this file
(`from helpers import ...`), never `from conftest import`. Tests that need the real MiniLM are marked `slow`.
Offline: HF_HUB_OFFLINE is set before transformers is imported; numpy's OpenBLAS runs one thread.
"""

import itertools
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy's OpenBLAS spins its threads: on a shared 2-core machine a 512x512 eigh ran 70x slower with 2 threads than
# with 1. Tests use small matrices, so one thread is also the fastest. Set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import BASE_IDS, TARGETS, build_tiny_model, lora_kwargs, planted_basis  # noqa: E402


def pytest_configure(config):
    """PEFT warns that a tiny model's id is not on the hub (we are offline on purpose)."""
    config.addinivalue_line("filterwarnings", "ignore:Could not find a config file in:UserWarning")
    config.addinivalue_line("markers", "slow: needs the real MiniLM or minutes of CPU (deselect with -m 'not slow')")

@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module of tiny-model tests: they gain nothing from more, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: tiny_model(arch="bert"|"gpt2", seed=0, hidden=32, base_id=None) -> a fresh model in eval mode."""
    return build_tiny_model

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

@pytest.fixture(scope="session")
def planted_adapters(tmp_path_factory):
    """Factory: planted_adapters(arch="bert", n=6, k=3, ranks=(2, 3), seed=0) -> (dirs, bases).

    Every adapter's A rows lie in span(bases[module]["A"]) (k, in) and its B columns in span(bases[module]["B"].T)
    (out, k), for every target module of the tiny model (written with edge_lorax.peft_io.write_adapter, scaling 1).
    Ranks cycle through `ranks`. Same arguments -> same folders."""
    from edge_lorax.builder.inject import layer_shape
    from edge_lorax.formats.peft import write_adapter

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


@pytest.fixture(scope="session")
def decoder_bundle(tmp_path_factory):
    """(root, model folder) of the tiny decoder (KV-cache) bundle, root / "bundle" (helpers.decoder): built once per
    session for test_llm_bundle.py and test_hf_interop.py; treat it as read-only (add files, never change them)."""
    from helpers.decoder import tiny_decoder_bundle

    return tiny_decoder_bundle(tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="session")
def bert(tmp_path_factory):
    """helpers.tiny's BERT set-up (model, adapters, subspace, a projected user) for the exporter's tests; read-only."""
    from helpers.tiny import tiny_setup

    return tiny_setup("bert", tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The shared tiny-BERT bundle and its users (one per test module)."""
    from helpers.runtime import get_setup

    return get_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(setup):
    """That bundle, opened with the default profile."""
    from edge_lorax.runtime import open_bundle

    return open_bundle(setup.bundle)
