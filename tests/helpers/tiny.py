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


def tiny_adapters(model_dir: Path, arch: str, out: Path, n: int = 4, rank: int = 4) -> list:
    """n random PEFT LoRA adapters on model_dir (loaded from disk, so the adapter names it as its base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModel if arch == "bert" else AutoModelForCausalLM
    dirs = []
    for i in range(n):
        torch.manual_seed(100 + i)
        model = cls.from_pretrained(model_dir)
        peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS[arch],
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
