"""Tensor, input and file names: defined once, imported by the builder, the exporter, the runtime and the formats.

A coefficients file (`user.npz`) is the ONNX feed: its keys are the graph's coefficient input names.
"""

COEFF_A = "coeff_A"  # (r, K): lora_A = coeff_A @ components_A
COEFF_B = "coeff_B"  # (K, r): lora_B = components_B @ coeff_B
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
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_MODEL = "model.onnx"

FORMAT_VERSION = 1


def coeff_name(module: str, side: str) -> str:
    """`<module>.coeff_A` / `<module>.coeff_B`; side is COEFF_A or COEFF_B."""
    return f"{module}.{side}"


def component_name(module: str, side: str) -> str:
    """`<module>.components_A` / `<module>.components_B` in subspace.safetensors."""
    return f"{module}.{side}"


def split_key(key: str) -> tuple[str, str]:
    """`a.b.c.coeff_A` -> ("a.b.c", "coeff_A")."""
    module, _, side = key.rpartition(".")
    return module, side
