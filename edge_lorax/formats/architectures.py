"""The architectures table: what edge-lorax knows per Hugging Face `model_type` (config.json), in one place.

One frozen `Architecture` row per model type: the PEFT target modules a build picks when no --targets is given and
the modules PEFT's `all-linear` resolves to, the sequence-classification head's module name, the position-offset
rule (RoBERTa-family position ids start after the pad id), onnxruntime's transformers-optimizer fusion type for a
fused encoder graph, and for a causal LM whether it gets a KV-cache decoder bundle: onnxruntime-genai's model type
(genai_config.json `model.type`) and the pattern of the HF module names the decoder's coefficient pass maps. Also
the causal-LM architecture suffixes (config.json `architectures`). Readers: builder.models (default targets, task
type, head), export.bundle / export.llm_bundle (which causal LMs get a KV-cache bundle), export.decoder (module
pattern), export.fuse (fusion type), runtime.infer (positions). Unknown types are refused in one line naming the
supported ones. Does not: load models, read files, import anything but the standard library and formats.errors.

How to add a model family: add one row to `_ROWS` stating only what is true today (a field left at its default
means "not supported": no default targets, no KV-cache bundle), put what the exporter must special-case in
`quirks`, then add the type to tests/test_architectures.py's expectations and a tiny-config reader check there.
"""

import re
from dataclasses import dataclass

from edge_lorax.formats.errors import InputError

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # config.json architectures of a causal LM checkpoint
ENCODER_FUSION = "bert"  # onnxruntime's optimizer type for a fused encoder whose row names none (what fuse.py always used)


@dataclass(frozen=True)
class Architecture:
    """What edge-lorax knows of one HF model_type; an empty / None field means "not supported here"."""

    model_type: str
    default_targets: tuple = ()  # PEFT target modules when no --targets is given
    all_linear: tuple = ()  # leaf module names PEFT's "all-linear" resolves to (every Linear / Conv1D but the head)
    head: str | None = None  # the *ForSequenceClassification head module (a Linear user.npz `head.*` replaces)
    position_offset: bool = False  # position ids start after pad_token_id: max_position_embeddings - pad - 1 usable
    fusion: str | None = None  # onnxruntime transformers-optimizer model_type for export/fuse.py's fused graph
    genai_type: str | None = None  # onnxruntime-genai model builder's model.type: None = no KV-cache decoder bundle
    decoder_modules: str | None = None  # regex over HF module names: (layer, block, projection) for export.decoder
    scaled_embeddings: bool = False  # embeddings x sqrt(hidden_size) (Gemma): export.decoder sets torch's exact factor
    quirks: str = ""  # free text: what an exporter or trainer must special-case

    @property
    def kv_cache(self) -> bool:
        """True when a causal LM of this type gets a KV-cache decoder bundle (else the cache-free logits graph)."""
        return self.genai_type is not None


_LLAMA_MODULES = r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj$"
_PHI3_MODULES = r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(qkv|o|gate_up|down)_proj$"
_LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NO_DECODER = "causal LM export: the cache-free logits graph (no KV-cache decoder bundle yet)"
_OFFSET = "position ids start after pad_token_id (RoBERTa's offset)"
_GQA = "head size a multiple of 16 (GroupQueryAttention)"
_PACKED = ("the genai builder packs q/k/v into one qkv_proj MatMul (export.decoder places each module at its "
           "columns: q, then k, then v)")
_CHAT = "chat template: the tokenizer's own (tokenizer_config.json / chat_template.jinja)"

_ROWS = (
    Architecture("bert", ("query", "value"), ("query", "key", "value", "dense"), head="classifier", fusion="bert",
                 quirks="q/k/v are separate Linear layers with bias; export --fuse packs them into one Attention "
                        "per layer; all-linear also takes the pooler's dense"),
    Architecture("gpt2", ("c_attn",), ("c_attn", "c_proj", "c_fc"), head="score",
                 quirks="Conv1D layers (weight (in, out): PEFT fan_in_fan_out); packed qkv in c_attn (one module, "
                        "3 x hidden outputs); " + _NO_DECODER),
    Architecture("llama", ("q_proj", "v_proj"), _LLAMA_LINEAR, head="score", genai_type="llama",
                 decoder_modules=_LLAMA_MODULES,
                 quirks=f"grouped-query attention (num_key_value_heads); {_PACKED}; gate/up stay two MatMuls; {_GQA}; "
                        + _CHAT),
    Architecture("mistral", ("q_proj", "v_proj"), _LLAMA_LINEAR, head="score", quirks=_NO_DECODER),
    Architecture("qwen2", ("q_proj", "v_proj"), _LLAMA_LINEAR, head="score", genai_type="qwen2",
                 decoder_modules=_LLAMA_MODULES,
                 quirks=f"q/k/v Linear layers carry a bias: the builder adds it after the packed MatMul (qkv_proj/Add), "
                        f"so the coefficient branch, added to the MatMul's output, sits before it as in torch; {_PACKED}; "
                        f"{_GQA}; {_CHAT}"),
    Architecture("qwen3", ("q_proj", "v_proj"), _LLAMA_LINEAR, head="score", genai_type="qwen3",
                 decoder_modules=_LLAMA_MODULES,
                 quirks=f"per-head RMSNorm of queries and keys (q_norm, k_norm) after the projections: the builder "
                        f"splits the packed output before them, and the branch is added before that Split; {_PACKED}; "
                        f"head_dim set apart from hidden / heads; {_GQA}; {_CHAT}"),
    Architecture("gemma3_text", ("q_proj", "v_proj"), _LLAMA_LINEAR, head="score", genai_type="gemma3_text",
                 decoder_modules=_LLAMA_MODULES, scaled_embeddings=True,
                 quirks=f"Gemma 3's text decoder (Gemma3ForCausalLM; the multimodal `gemma3` type is not served): "
                        f"embeddings scaled by sqrt(hidden_size) (the builder rounds it to 2 decimals, export.decoder "
                        f"restores torch's float32 value), RMSNorm with (1 + weight), q/k norms as in qwen3, four norms "
                        f"per layer, sliding-window and global layers with their own RoPE bases (the sliding ones keep "
                        f"full-length KV caches: export.decoder.FIXED_OPTIONS; on transformers 5.x "
                        f"export.genai_builder folds the per-layer-type rope_parameters for the builder), attention "
                        f"scale query_pre_attn_scalar^-0.5; {_PACKED}; {_GQA}; {_CHAT}"),
    Architecture("phi3", ("qkv_proj",), ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), head="score",
                 genai_type="phi3", decoder_modules=_PHI3_MODULES,
                 quirks=f"the HF model's own modules are fused: self_attn.qkv_proj (q, k, v rows) and mlp.gate_up_proj "
                        f"(gate, up rows), so PEFT targets qkv_proj (not q_proj / v_proj) and all-linear is four modules; "
                        f"the builder keeps qkv_proj as one MatMul (the branch covers all its columns) and splits "
                        f"gate_up_proj into gate_proj and up_proj MatMuls (export.decoder adds each half of the "
                        f"module's rows to its MatMul); LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini: another builder class, "
                        f"export.genai_builder gives it 4.x's rope key) and partial rotary embeddings (GroupQueryAttention "
                        f"wants the rotated half-width a multiple of 8); {_GQA}; {_CHAT}"),
    *(Architecture(t, position_offset=True, quirks=_OFFSET) for t in (
        "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "mpnet", "longformer", "ibert")),
)
ARCHITECTURES = {row.model_type: row for row in _ROWS}


def supported_types(field: str | None = None) -> tuple:
    """Model types in table order; with `field`, only the rows where that field is set (truthy)."""
    return tuple(t for t, row in ARCHITECTURES.items() if field is None or getattr(row, field))


def _refuse(model_type, where, what: str, field: str | None, fix: str = "") -> InputError:
    """The one-line refusal: where, the type, the supported ones, the fix."""
    at = f"{where}: " if where else ""
    return InputError(f"{at}model_type {model_type!r} has no {what} here (supported: "
                      f"{', '.join(supported_types(field))}){'; ' + fix if fix else ''}")


def get_architecture(model_type, path=None) -> Architecture:
    """The row of `model_type`; InputError naming `path` (a config.json or its folder) and the supported types."""
    if model_type not in ARCHITECTURES:
        raise _refuse(model_type, path, "entry in the architectures table", None, "pass a model of a supported type")
    return ARCHITECTURES[model_type]


def find_architecture(model_type) -> Architecture | None:
    """The row of `model_type`, None for a type the table does not hold (readers with a generic fallback)."""
    return ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None


def is_causal_lm(architectures) -> bool:
    """config.json `architectures` names a causal LM (*ForCausalLM / *LMHeadModel); anything not a list is not."""
    if not isinstance(architectures, (list, tuple)):
        return False
    return any(str(a).endswith(CAUSAL_LM_SUFFIXES) for a in architectures)


def get_default_targets(model_type, path=None) -> tuple:
    """PEFT target modules when no --targets is given; InputError naming `path` and the types that have them."""
    row = find_architecture(model_type)
    if row is None or not row.default_targets:
        raise _refuse(model_type, path, "default target modules", "default_targets",
                      "pass --targets (comma-separated Linear module names, or all-linear)")
    return row.default_targets


def head_modules(model_type=None) -> tuple:
    """Head module names to look for: the type's own first, then every other head the table knows."""
    row = find_architecture(model_type)
    known = tuple(dict.fromkeys(r.head for r in ARCHITECTURES.values() if r.head))
    own = (row.head,) if row is not None and row.head else ()
    return own + tuple(h for h in known if h not in own)


def has_position_offset(model_type) -> bool:
    """Position ids start after pad_token_id (RoBERTa family); False for any type the table does not hold."""
    row = find_architecture(model_type)
    return row is not None and row.position_offset


def fusion_type(model_type=None) -> str:
    """onnxruntime's transformers-optimizer model_type for a fused encoder: the row's, else ENCODER_FUSION."""
    row = find_architecture(model_type)
    return row.fusion if row is not None and row.fusion else ENCODER_FUSION


def supports_kv_cache(model_type) -> bool:
    """A causal LM of this type gets a KV-cache decoder bundle (others keep the cache-free logits graph)."""
    row = find_architecture(model_type)
    return row is not None and row.kv_cache


def kv_cache_types() -> tuple:
    """The model types that get a KV-cache decoder bundle (what `generate` serves)."""
    return supported_types("genai_type")


def decoder_pattern(genai_type, where=None) -> re.Pattern:
    """The HF module-name regex (groups: layer, self_attn|mlp, projection) of the row with this genai model.type."""
    for row in ARCHITECTURES.values():
        if row.genai_type is not None and row.genai_type == genai_type:
            return re.compile(row.decoder_modules)
    raise _refuse(genai_type, where, "KV-cache decoder export", "genai_type")


def generate_fix() -> str:
    """The fix for a bundle `generate` cannot serve (a check_target `fix`): names the KV-cache model types."""
    return (f"`generate` needs one exported from a causal LM of model_type {' or '.join(kv_cache_types())} "
            "(`edge-lorax export --model smollm2 ...`); use `edge-lorax run` for this one")


def refuse_generate(where, task, model_type):
    """Raise the one-line InputError for a bundle `generate` cannot serve (not a KV-cache decoder bundle)."""
    kind = f"a {task} bundle" + (f" of model_type {model_type!r}" if model_type else "")
    raise InputError(f"{where}: {kind}, not a decoder (KV-cache) bundle; {generate_fix()}")
