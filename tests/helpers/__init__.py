"""Plain test helpers (imported as `from helpers import ...`): tiny random models, PEFT adapter keywords, planted
subspaces, token batches, corrupted copies. Fixtures live in tests/conftest.py; runtime builders in helpers.runtime,
tiny model + adapters + subspace set-ups for the exporter in helpers.tiny.
"""

import shutil

import numpy as np
import torch

VOCAB = 100
BASE_IDS = {"bert": "edge-lorax/tiny-random-bert", "gpt2": "edge-lorax/tiny-random-gpt2"}
TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn", "c_fc"]}


def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def tiny_config(arch: str, hidden: int = 32, vocab: int = VOCAB, **extra):
    """The one tiny-model config (2 layers): BERT (Linear q/k/v), GPT-2 (Conv1D c_attn/c_fc) or Llama (GQA: 4 heads,
    2 KV heads); `extra` overrides any field (positions, labels, architectures)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if arch == "bert":
        return BertConfig(**{"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 2,
                             "intermediate_size": 2 * hidden, "max_position_embeddings": 64, "num_labels": 2, **extra})
    if arch == "gpt2":
        return GPT2Config(**{"vocab_size": vocab, "n_embd": hidden, "n_layer": 2, "n_head": 2, "n_positions": 64,
                             "num_labels": 2, "pad_token_id": 0, **extra})
    if arch == "llama":
        return LlamaConfig(**{"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "intermediate_size": 2 * hidden, "max_position_embeddings": 64, **extra})
    raise ValueError(f"unknown arch {arch!r}; use 'bert', 'gpt2' or 'llama'")


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


def lora_kwargs(arch: str, **overrides) -> dict:
    """LoraConfig keywords: r=4, alpha=8, the arch's targets, non-zero init, fan_in_fan_out for GPT-2's Conv1D."""
    kw = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS[arch], "init_lora_weights": False,
          "fan_in_fan_out": arch == "gpt2"}
    kw.update(overrides)
    return kw


def planted_basis(rng: np.random.Generator, dim: int, k: int) -> np.ndarray:
    """(k, dim) orthonormal rows."""
    return np.linalg.qr(rng.standard_normal((dim, k)))[0].T


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


def random_user(subspace, seed: int, *, labels: int = 0, hidden: int = 32, scale: float = 0.5, dist: str = "uniform"):
    """A seeded random user of `subspace` (edge_lorax.formats.synthetic), with a (hidden, labels) head when labels > 0."""
    from edge_lorax.formats import names
    from edge_lorax.formats.synthetic import random_user as synthetic_user
    from edge_lorax.formats.user import subspace_shapes

    shapes = subspace_shapes(subspace)
    if labels:
        shapes.update({names.HEAD_WEIGHT_T: (hidden, labels), names.HEAD_BIAS: (labels,)})
    return synthetic_user(shapes, subspace.fingerprint, seed, scale=scale, dist=dist)


def ort_session(path):
    """A one-thread CPU ONNX Runtime session, warnings off: the tests' way to run a graph file."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
