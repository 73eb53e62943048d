"""Tiny random models, PEFT LoRA adapters, subspaces and users: seconds on a CPU, no downloads. For tests and demos.

`tiny_setup("bert" | "gpt2" | "llama", root)` writes a model folder, N random LoRA adapters on it
(init_lora_weights=False), a subspace built from them and one projected user. Numbers mean nothing; shapes and
plumbing are real (BERT Linear, GPT-2 Conv1D, Llama GQA). Needs torch, transformers and peft.
"""

from dataclasses import dataclass
from pathlib import Path

TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


@dataclass(frozen=True)
class TinySetup:
    model: Path  # a save_pretrained folder (no tokenizer)
    subspace: Path
    adapters: tuple  # PEFT adapter folders
    user: Path  # user.npz: adapter 0 projected onto the subspace (no head)


ARCHITECTURES = {"bert": "BertModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


def _config(arch: str):
    from helpers import tiny_config

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(TARGETS)}, got {arch!r}")
    return tiny_config(arch, vocab=99, architectures=[ARCHITECTURES[arch]])


def tiny_model(arch: str, out: Path, seed: int = 0) -> Path:
    """A seeded random model folder (BertModel, GPT2LMHeadModel or LlamaForCausalLM)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    cls = AutoModel if arch == "bert" else AutoModelForCausalLM
    cls.from_config(_config(arch)).save_pretrained(out)
    return Path(out)


def tiny_adapters(model_dir: Path, arch: str, out: Path, n: int = 4, rank: int = 4, targets=None) -> list:
    """n random PEFT LoRA adapters on model_dir (loaded from disk, so the adapter names it as its base); targets: PEFT
    target_modules (a list or "all-linear"), else TARGETS[arch]."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModel if arch == "bert" else AutoModelForCausalLM
    dirs = []
    for i in range(n):
        torch.manual_seed(100 + i)
        model = cls.from_pretrained(model_dir)
        peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets or TARGETS[arch],
                                                init_lora_weights=False, fan_in_fan_out=arch == "gpt2"))
        peft.save_pretrained(out / f"adapter{i}")
        dirs.append(out / f"adapter{i}")
    return dirs


def tiny_setup(arch: str, root, n_adapters: int = 4, k: int = 4) -> TinySetup:
    """Model + adapters + subspace (K=k) + one projected user under root."""
    import transformers

    from edge_lorax.builder.project import project_adapter
    from edge_lorax.builder.subspace import build_subspace
    from edge_lorax.formats.subspace import write_subspace
    from edge_lorax.formats.user import write_user

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    root = Path(root)
    model = tiny_model(arch, root / f"tiny-{arch}")
    adapters = tiny_adapters(model, arch, root / "adapters", n_adapters)
    subspace = write_subspace(build_subspace(adapters, components=k), root / "subspace")
    from edge_lorax.formats.subspace import read_subspace

    user = write_user(project_adapter(read_subspace(subspace), adapters[0]).coeffs, root / "user.npz")
    return TinySetup(model, subspace, tuple(adapters), user)


def word_tokenizer(words, chat_template: str | None = None):
    """A word-level fast tokenizer over `words` (lower-cased, split on whitespace and punctuation); the first three
    words are its pad, unk and EOS specials."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[1]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=words[0], unk_token=words[1], eos_token=words[2])
    if chat_template:
        fast.chat_template = chat_template
    return fast


def tiny_decoder_dir(out: Path, words, seed: int = 0, chat_template: str | None = None, hidden: int = 32) -> Path:
    """A seeded random 2-layer LlamaForCausalLM (GQA: v_proj 32 -> 16) saved with a word-level tokenizer over `words`
    (pad, unk, EOS first) and architectures ["LlamaForCausalLM"]: a model folder `--model` takes like SmolLM2's.
    hidden=64 gives heads of 16, the least that onnxruntime's GroupQueryAttention takes."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    from helpers import tiny_config

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = tiny_config("llama", hidden, vocab=len(words), architectures=["LlamaForCausalLM"], pad_token_id=0, bos_token_id=None,
                         eos_token_id=2)
    LlamaForCausalLM(config).eval().save_pretrained(out)
    word_tokenizer(words, chat_template).save_pretrained(out)
    return Path(out)


# The decoder families beside Llama, tiny: 2 layers, 4 query heads of 16 and 2 KV heads (GroupQueryAttention takes
# head sizes that are multiples of 16), intermediate 128. Gemma 3: hidden 48 (not heads x head_dim, as in the real
# models; sqrt(48) is not what the builder's two-decimal rounding gives), one sliding-window layer (window 8) and one
# global layer with their own RoPE bases, attention scale query_pre_attn_scalar^-0.5 = 24^-0.5 (not head_dim's).
# Phi-3: fused qkv_proj / gate_up_proj modules; max_position_embeddings = original_max_position_embeddings (the
# builder's Phi3MiniModel), or not (phi3-longrope: its Phi3MiniLongRoPEModel).
# Weights drawn at std 0.2 (Gemma 0.05: its embeddings are scaled by sqrt(hidden) and tied to the head), so that
# greedy answers do not collapse into one repeated token.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "hidden_size": 48, "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"], "initializer_range": 0.05}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"original_max_position_embeddings": 128}),
    # Phi-3.5-mini / Phi-4-mini style: LongRoPE (the long factors past 64 positions) and a partial rotary embedding
    # (half of each head; GroupQueryAttention wants the rotated half-width a multiple of 8, hence 2 heads of 32)
    "phi3-longrope": ("Phi3Config", "Phi3ForCausalLM", {
        "num_attention_heads": 2, "num_key_value_heads": 1, "partial_rotary_factor": 0.5,
        "original_max_position_embeddings": 64, "rope_parameters": {
            "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 64,
            "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [2.0 + 0.3 * i for i in range(8)]}}),
}


def rope_for_installed_transformers(extra: dict, version: str) -> dict:
    """transformers 4.x spells `rope_parameters` as `rope_scaling` {type, short_factor, long_factor} and ignores the
    5.x name silently (the model would keep plain RoPE while config.json claims LongRoPE)."""
    if int(version.split(".")[0]) >= 5 or "rope_parameters" not in extra:
        return extra
    rope = extra["rope_parameters"]
    scaling = {"type": rope["rope_type"], "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]}
    return {**{k: v for k, v in extra.items() if k != "rope_parameters"}, "rope_scaling": scaling}


def tiny_family_dir(family: str, out: Path, words, seed: int = 0, chat_template: str | None = None) -> Path:
    """A seeded random 2-layer causal LM of `family` (FAMILIES) saved with a word-level tokenizer over `words` (pad,
    unk, EOS first) and its architectures: a model folder `--model` takes. Biases and norm weights are drawn at
    random too (transformers initialises them to 0 / 1, and the model builder leaves out an all-zero bias). The
    tokenizer is saved as a PreTrainedTokenizerFast (transformers 5 would otherwise load it as the family's own
    tokenizer class, which reads a word-level tokenizer.json as empty)."""
    import torch
    import transformers

    from edge_lorax.formats.tokenizer_files import make_portable

    transformers.logging.set_verbosity_error()
    config_cls, model_cls, extra = FAMILIES[family]
    extra = rope_for_installed_transformers(extra, transformers.__version__)
    settings = {"vocab_size": len(words), "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128,
                "pad_token_id": 0, "bos_token_id": None, "eos_token_id": 2, "initializer_range": 0.2,
                "tie_word_embeddings": family in ("qwen2", "gemma3"), **extra}
    config = getattr(transformers, config_cls)(architectures=[model_cls], **settings)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out)
    word_tokenizer(words, chat_template).save_pretrained(out)
    make_portable(Path(out) / "tokenizer_config.json")
    return Path(out)
