"""Tensor, input and file names: defined once, imported by the builder, the exporter, the runtime and the formats.

A coefficients file (`user.npz`) is the ONNX feed: its keys are the graph's coefficient input names.
"""

COEFF_A = "coeff_A"  # (r, K): lora_A = coeff_A @ components_A
COEFF_B = "coeff_B"  # (K, r): lora_B = components_B @ coeff_B
LORA_A = "lora_A"  # (r, in): a full LoRA factor as a graph input (the multi-LoRA anchor graph)
LORA_B = "lora_B"  # (out, r)
COMPONENTS_A = "components_A"  # (K, in)
COMPONENTS_B = "components_B"  # (out, K)
HEAD_PREFIX = "head."  # task-head tensors in a coefficients file: head.weight_t (in, labels), head.bias (labels,)
HEAD_WEIGHT_T = HEAD_PREFIX + "weight_t"  # stored pre-transposed: graphs use MatMul + Add, never Gemm (see NOTES)
HEAD_BIAS = HEAD_PREFIX + "bias"
META_KEY = "__meta__"  # 0-d unicode array holding JSON metadata; never a graph input

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"

SUBSPACE_CONFIG = "subspace_config.json"
SUBSPACE_WEIGHTS = "subspace.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINING_JSON = "training.json"  # beside a baseline adapter: task, labels, settings, metrics
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_MODEL = "model.onnx"
BUNDLE_MODEL_INT8 = "model.int8.onnx"  # dynamic int8 base weights; coefficient inputs and the low-rank path stay fp32
BUNDLE_MODEL_INT8_ORT = "model.int8.ort"
BUNDLE_MODEL_ORT = "model.ort"
BUNDLE_MODEL_GRADIENT = "model.grad.onnx"  # loss and d loss / d every feed (export/gradient.py): personalize's exact path
LOSS = "loss"  # the gradient graph's scalar output
LABELS = "labels"  # the gradient graph's (batch,) targets: int64 class ids, float32 for regression
GRAD_PREFIX = "grad."  # the gradient graph's outputs: grad.<feed name>, the feed's shape
BUNDLE_MODEL_FUSED = "model.fused.onnx"  # `export --fuse`: Attention / SkipLayerNormalization / BiasGelu (export/fuse.py)
BUNDLE_KIND = "edge-lorax-bundle"
ORT_SUFFIX = ".ort"  # ORT-format model beside its .onnx: model.onnx -> model.ort
EXTERNAL_DATA_SUFFIX = ".data"  # model.onnx -> model.onnx.data, only when the weights exceed protobuf's 2 GB

HEAD_INPUT = "head_input"  # (batch, in): what the task head reads (BERT: the pooler output); fits a head on device
FEATURES = "features"  # (batch, hidden) masked mean of the last hidden state (sentence-transformers pooling)
LAST_HIDDEN_STATE = "last_hidden_state"  # (batch, sequence, hidden): features bundles' second output (optimum, ST)
DIM_BATCH = "batch"  # symbolic dims of graph inputs/outputs, as written in the bundle manifest
DIM_SEQUENCE = "sequence"

TASK_CLASSIFICATION = "classification"
TASK_REGRESSION = "regression"
TASK_FEATURES = "features"
TASK_CAUSAL_LM = "causal-lm"
TASKS = (TASK_CLASSIFICATION, TASK_REGRESSION, TASK_FEATURES, TASK_CAUSAL_LM)
MODE_SHARED = "coefficients"  # one user per run: coefficient inputs (r, K)
MODE_PER_EXAMPLE = "per-example"  # one user per example: coefficient inputs (batch, r, K)
MODE_MERGED = "merged"  # one user's ΔW folded into the weights: no coefficient inputs
BUNDLE_CONFIG = "config.json"  # the HF model config inside a bundle (labels, problem type)
TOKENIZER_FILE = "tokenizer.json"  # the fast tokenizer inside a bundle, read by the `tokenizers` package
GENAI_CONFIG = "genai_config.json"  # onnxruntime-genai's model config inside a decoder bundle
TOKENIZER_CONFIG = "tokenizer_config.json"  # special tokens, chat template (a fallback to CHAT_TEMPLATE)
CHAT_TEMPLATE = "chat_template.jinja"  # the chat template beside a decoder bundle's tokenizer
ADAPTER_SUFFIX = ".onnx_adapter"  # ONNX Runtime LoraAdapter file of one user
TOKEN_TYPE_IDS = "token_type_ids"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)  # graph inputs fed from the tokenizer; others: per-user or KV
# A decoder bundle's KV-cache inputs, past_key_values.<layer>.key / .value (batch, kv heads, past length, head size):
# fed by the generation loop, neither tokens nor a user's.
KV_INPUT_PREFIX = "past_key_values."
# Model files of a bundle by variant; the runtime falls back to these when the manifest has no `files` entry.
BUNDLE_VARIANT_FILES = {"fp32": BUNDLE_MODEL, "int8": BUNDLE_MODEL_INT8, "ort": BUNDLE_MODEL_ORT,
                        "int8_ort": BUNDLE_MODEL_INT8_ORT, "per_example": "model.per_example.onnx",
                        "merged": "model.merged.onnx", "fused": BUNDLE_MODEL_FUSED}

FORMAT_VERSION = 1


def coeff_name(module: str, side: str) -> str:
    """`<module>.coeff_A` / `<module>.coeff_B`; side is COEFF_A or COEFF_B."""
    return f"{module}.{side}"


def kv_input_name(layer: int, kind: str) -> str:
    """`past_key_values.<layer>.key` / `.value`; kind is "key" or "value"."""
    return f"{KV_INPUT_PREFIX}{layer}.{kind}"


def component_name(module: str, side: str) -> str:
    """`<module>.components_A` / `<module>.components_B` in subspace.safetensors."""
    return f"{module}.{side}"


def split_key(key: str) -> tuple[str, str]:
    """`a.b.c.coeff_A` -> ("a.b.c", "coeff_A")."""
    module, _, side = key.rpartition(".")
    return module, side
