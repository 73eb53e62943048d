"""KV-cache decoder graphs: onnxruntime-genai's model builder makes the base, one pass adds the coefficient inputs.

The builder (`python -m onnxruntime_genai.models.builder`) writes a decoder with the KV cache as inputs
`past_key_values.<i>.key/value` and outputs `present.<i>.key/value`, GroupQueryAttention, fused q/k/v projections and,
at int4, MatMulNBits weights; `genai_config.json` beside it lets onnxruntime-genai generate from it. `add_coefficients`
then puts each target module's low-rank path beside the projection that writes it, as a small Model -> Model pass:

    δ = ((x · C_Aᵀ) · M) · C_Bᵀ,   M = (coeff_B · coeff_A)ᵀ                # (…, K) · (K, K) · (K, out): ΔW x (paper §3)

Modules that read the same input (q, k and v) share one MatMul against their stacked components_A; the modules that
write one fused output (qkv_proj) share one M (block diagonal) and one MatMul against their components_B, placed at
their columns. Every M of a family of outputs (same width, same module shapes: every layer's qkv_proj) is assembled
at once per run from the coefficient inputs — two Concats, one batched product, a block mask, one Split — so each
projection adds per token three MatMuls and an Add, however many target modules it holds, and the components stay
constants. (Assembling W = M · C_Bᵀ per run instead, one MatMul fewer per token, measured slower on SmolLM2 at int4:
it rewrites every layer's (K, out) matrix on every decode step; benchmarks/llm.) Coefficient inputs are named like
the keys of a user.npz and get same-name initializers (optional inputs) holding the default user.

Per family (formats.architectures: the row's genai_type picks its module-name pattern). Every branch is added to
the projection MatMul's own output, so whatever the builder puts after it sees output + δ, as torch does:
- llama, qwen2, qwen3, gemma3_text: HF q/k/v_proj are packed into one `attn/qkv_proj/MatMul`; each module is placed
  at its columns (q, k, v by genai_config's heads × head_size; Gemma 3's head_dim differs from hidden / heads);
  o/gate/up/down_proj are their own MatMuls. Qwen2's q/k/v bias is a packed `qkv_proj/Add` after the MatMul (only
  when the bias is non-zero); Qwen3's and Gemma 3's q/k norms follow a `qkv_proj/Split` after it: both then read the
  sum. Gemma's scaled embeddings: `exact_embedding_scale` sets the builder's rounded sqrt(hidden_size) to torch's;
  its sliding-window layers keep full-length caches (FIXED_OPTIONS).
- phi3: the HF modules are fused already. self_attn.qkv_proj is the builder's qkv_proj MatMul, whole (columns 0 to
  q + 2·kv); mlp.gate_up_proj is built as two MatMuls, gate_proj and up_proj, so the module gets one branch on each,
  with the matching half of its components_B rows (one pair of coefficient inputs, its M assembled for both).
A module none of these finds whole (a builder that fused or dropped it, e.g. attention with the weights inside the
op) is refused in one line naming it and the model type; the export's verification against torch (the response
check) would catch an unwired branch anyway.

Does not: quantize (the builder does, at the precision asked), tokenizers or generation.
"""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_lorax.export.passes import add_input_defaults, sort_nodes
from edge_lorax.formats import architectures, names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.subspace import Subspace

BUILDER = "onnxruntime_genai.models.builder"
BUILDER_MAIN = "edge_lorax.export.genai_builder"  # BUILDER, on transformers 5.x and 4.57 alike
PRECISIONS = ("fp32", "int8", "int4")  # the model builder's -p; int8 / int4: weight-only MatMulNBits
BATCH = "batch_size"  # the builder's name for the batch dim of input_ids
_PACKED = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}  # a module inside a packed MatMul
_SPLIT = {"gate_up": ("gate", "up")}  # an HF module (Phi-3) whose rows the builder builds as separate MatMuls


@dataclass(frozen=True)
class Slot:
    """Where (part of) one target module's output lives in the builder's graph: the module's output rows
    [row, row + hi - lo) are columns [lo, hi) of tensor `output`."""

    module: str
    output: str  # the projection MatMul's output tensor
    x: str  # its input tensor (the normed hidden state)
    lo: int
    hi: int
    row: int = 0  # the module's first output row held here (Phi-3's gate_up_proj: 0 in gate_proj, I in up_proj)


# Always passed: sliding-window layers (Gemma 3) keep a full-length KV cache and GroupQueryAttention masks the window
# (local_window_size). The builder's default, a ring cache of the window's size, is sized by onnxruntime-genai 0.18's
# runtime from max_length, and GroupQueryAttention refuses a ring smaller than the window: every generation shorter
# than 512 tokens failed on Gemma 3 270M ("KV cache capacity (18) must be at least local_window_size (512)"). Same
# logits; the cost is a full cache per sliding layer (Gemma 3 270M: 2 KiB per token and layer at fp32).
FIXED_OPTIONS = ("windowed_kv_cache=false",)


def run_model_builder(model_dir: Path, out: Path, precision: str, model_id: str, options=()) -> Path:
    """Build the base decoder graph (CPU) into `out`; `options` are the builder's KEY=VALUE extra options (e.g.
    algo_config=k_quant_mixed); raises InputError with the builder's last lines on failure."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_builder_options(options)
    cmd = [sys.executable, "-m", BUILDER_MAIN, "-m", model_id, "-i", str(model_dir), "-o", str(out), "-p", precision,
           "-e", "cpu", "-c", str(out / ".builder_cache")]
    extra = (*FIXED_OPTIONS, *options)
    cmd += ["--extra_options", *extra] if extra else []
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not (out / names.BUNDLE_MODEL).is_file():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise InputError(f"{model_dir}: onnxruntime-genai's model builder failed ({tail}); is it an HF folder of "
                         f"model type {' / '.join(architectures.kv_cache_types())} and is onnxruntime-genai installed "
                         "(pip install 'edge-lorax[decoder]')?")
    return out


# The model builder's weight-quantization options (its `--extra_options` help), the ones a decoder bundle passes on;
# the others change the graph's inputs or layout (exclude_embeds, adapter_path, filename, ...) and are refused.
BUILDER_OPTIONS = ("accuracy_level", "block_size", "is_symmetric", "op_types_to_quantize", "nodes_to_exclude",
                   "algo_config", "matmul_mixed_precision", "int4_accuracy_level", "int4_block_size", "int4_is_symmetric",
                   "int4_op_types_to_quantize", "int4_nodes_to_exclude", "int4_algo_config")


def check_builder_options(options):
    """KEY=VALUE each, a key of BUILDER_OPTIONS, each key once: InputError naming the offending option."""
    keys = [o.partition("=")[0] for o in options]
    bad = next((o for o, k in zip(options, keys) if "=" not in o or k not in BUILDER_OPTIONS), None)
    if bad is not None:
        raise InputError(f"--builder-option {bad!r}: a decoder bundle takes KEY=VALUE with KEY one of the model "
                         f"builder's quantization options {', '.join(BUILDER_OPTIONS[:7])} (int4_ aliases too)")
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise InputError(f"--builder-option {twice} is given twice; give each key once")


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def _head_columns(config: dict) -> dict:
    """Output columns of q, k and v inside a fused qkv projection, from genai_config.json's decoder section."""
    dec = config["model"]["decoder"]
    q, kv = dec["num_attention_heads"] * dec["head_size"], dec["num_key_value_heads"] * dec["head_size"]
    return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}


def _matmul(made: dict, where: str, proj: str) -> str | None:
    """The output tensor of the builder's MatMul (or MatMulNBits, same name) for projection `proj`, None if absent."""
    name = f"{where}/{proj}_proj/MatMul/output_0"
    return name if name in made else None


def _module_slots(graph, made: dict, module: str, layer: str, block: str, proj: str, rows: int, config: dict) -> list:
    """The Slots of one module (rows: its output width), [] when the builder's graph has no MatMul that writes it
    whole: its own MatMul of that width; its columns in a packed qkv_proj (q / k / v by the head layout) or
    gate_up_proj (gate / up halves); or, for a fused HF module the builder splits (Phi-3's gate_up_proj), one Slot per
    part MatMul holding its share of the rows, in order."""
    where = f"/model/layers.{layer}/{'attn' if block == 'self_attn' else 'mlp'}"
    own = _matmul(made, where, proj)
    if own is not None and _width(graph, own) == rows:
        return [Slot(module, own, made[own].input[0], 0, rows)]
    packed = _matmul(made, where, _PACKED[proj]) if proj in _PACKED else None
    if packed is not None:
        width = _width(graph, packed)
        lo, hi = _head_columns(config)[proj] if proj in ("q", "k", "v") else ((0, width // 2) if proj == "gate" else (width // 2, width))
        return [Slot(module, packed, made[packed].input[0], lo, hi)] if hi - lo == rows else []
    parts = [_matmul(made, where, part) for part in _SPLIT.get(proj, ())]
    if parts and None not in parts and sum(_width(graph, o) for o in parts) == rows:
        slots, row = [], 0
        for out in parts:
            slots.append(Slot(module, out, made[out].input[0], 0, _width(graph, out), row))
            row += _width(graph, out)
        return slots
    return []


def find_slots(model: onnx.ModelProto, subspace: Subspace, config: dict) -> list:
    """The Slots of every subspace module; raises InputError (one line, naming the module and the model type) for a
    module the builder's graph does not expose as a whole."""
    made, slots = _producers(model.graph), []
    genai_type = config["model"].get("type")
    pattern = architectures.decoder_pattern(genai_type, names.GENAI_CONFIG)
    for module, ms in subspace.modules.items():
        m = pattern.match(module)
        if not m:
            raise InputError(f"subspace module {module}: not an attention/MLP projection that the decoder export knows "
                             f"for model type {genai_type!r} ({pattern.pattern}); build the subspace on those modules")
        found = _module_slots(model.graph, made, module, *m.groups(), ms.components_B.shape[0], config)
        if not found:
            raise InputError(f"subspace module {module}: the {genai_type} graph of onnxruntime-genai's model builder has "
                             f"no MatMul that writes its {ms.components_B.shape[0]} outputs, so its coefficients would "
                             "have no effect; build the subspace without it (e.g. the default --targets)")
        slots.extend(found)
    return slots


EMBED_MUL = "/model/embed_tokens/Mul"  # the builder's scaling of the embeddings (Gemma)


def exact_embedding_scale(model: onnx.ModelProto, model_config: dict, where=None) -> onnx.ModelProto:
    """For a model type whose embeddings are scaled (formats.architectures `scaled_embeddings`: Gemma), point the
    builder's embedding Mul at torch's factor, sqrt(hidden_size) in the graph's dtype: the builder rounds it to two
    decimals (25.3 for Gemma 3 270M's 640, torch 25.2982: every logit off by ~1e-4 relative). In place; returns
    `model`. InputError when the row says scaled and the graph has no such Mul (a builder that changed)."""
    row = architectures.find_architecture(model_config.get("model_type"))
    if row is None or not row.scaled_embeddings:
        return model
    node = next((n for n in model.graph.node if n.name == EMBED_MUL), None)
    made = _producers(model.graph)
    const = made.get(node.input[1]) if node is not None else None
    if const is None or const.op_type != "Constant":
        raise InputError(f"{where or 'the model'}: the {row.model_type} graph of onnxruntime-genai's model builder has "
                         f"no {EMBED_MUL} by a constant (the embedding scale); this builder version is not supported")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(const.attribute[0].t.data_type)
    scale = np.asarray(np.float32(model_config["hidden_size"] ** 0.5), dtype=dtype)  # torch: tensor(h ** 0.5).to(dtype)
    model.graph.initializer.append(numpy_helper.from_array(scale, "/edge_lorax/embed_scale"))
    node.input[1] = "/edge_lorax/embed_scale"
    if not any(const.output[0] in n.input for n in model.graph.node):
        model.graph.node.remove(const)  # the builder's rounded factor, now read by nothing
    return model


def _init(graph, name: str, arr: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
    return name


def _coefficient_inputs(graph, slot: Slot, ms, per_example: bool):
    """(r, K) and (K, r) float32 inputs; per example with a leading batch dim (the builder's batch_size)."""
    lead = [BATCH] if per_example else []
    for side, shape in ((names.COEFF_A, [ms.rank, ms.k]), (names.COEFF_B, [ms.k, ms.rank])):
        graph.input.append(helper.make_tensor_value_info(names.coeff_name(slot.module, side), onnx.TensorProto.FLOAT,
                                                         lead + shape))


def _const(graph, name: str, values, dtype=np.int64) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
    return name


def _assemble(graph, p: str, outputs: list, subspace: Subspace, per_example: bool) -> str:
    """Nodes computing every mixing matrix of a family of outputs at once from the coefficient inputs (a handful of
    tiny kernels per run), returned one per output: M_all (F, S·K, S·K), per example (batch, F, S·K, S·K), where output f's M holds its S
    modules' (coeff_B · coeff_A)ᵀ on the diagonal blocks. One batched product gives every cross block too (T·U with
    T = [coeff_A,1 … coeff_A,S]ᵀ, U = [coeff_B,1 … coeff_B,S]ᵀ); a constant block mask zeroes the cross blocks."""
    slots = [s for _, group in outputs for s in group]
    f, n = len(outputs), len(slots)
    ms0 = subspace.modules[slots[0].module]
    k, r, per = ms0.k, ms0.rank, n // f
    mask = np.kron(np.eye(per, dtype=np.float32), np.ones((k, k), np.float32))  # (S·K, S·K)
    lead, t = ([0], [0, 1, 2, 4, 3]) if per_example else ([], [0, 1, 3, 2])  # Reshape's 0 keeps the batch dim
    a = [names.coeff_name(s.module, names.COEFF_A) for s in slots]
    b = [names.coeff_name(s.module, names.COEFF_B) for s in slots]
    graph.node.extend([
        helper.make_node("Concat", a, [f"{p}/A"], name=f"{p}/A", axis=-2),  # (F·S·r, K)
        helper.make_node("Reshape", [f"{p}/A", _const(graph, f"{p}/A_shape", lead + [f, per, r, k])], [f"{p}/A4"],
                         name=f"{p}/A4"),
        helper.make_node("Transpose", [f"{p}/A4"], [f"{p}/At"], name=f"{p}/At", perm=t),  # (F, S, K, r)
        helper.make_node("Reshape", [f"{p}/At", _const(graph, f"{p}/T_shape", lead + [f, per * k, r])], [f"{p}/T"],
                         name=f"{p}/T"),  # (F, S·K, r): every coeff_Aᵀ stacked
        helper.make_node("Concat", b, [f"{p}/B"], name=f"{p}/B", axis=-2),  # (F·S·K, r)
        helper.make_node("Reshape", [f"{p}/B", _const(graph, f"{p}/B_shape", lead + [f, per * k, r])], [f"{p}/B3"],
                         name=f"{p}/B3"),  # (F, S·K, r): every coeff_B stacked
        helper.make_node("Transpose", [f"{p}/B3"], [f"{p}/U"], name=f"{p}/U", perm=[0, 1, 3, 2] if per_example else [0, 2, 1]),
        helper.make_node("MatMul", [f"{p}/T", f"{p}/U"], [f"{p}/TU"], name=f"{p}/TU"),  # (F, S·K, S·K)
        helper.make_node("Mul", [f"{p}/TU", _init(graph, f"{p}/block_mask", mask)], [f"{p}/M"], name=f"{p}/M"),
    ])
    return _split(graph, f"{p}/M", [f"{p}/M{j}" for j in range(f)], per_example)


def _split(graph, m_all: str, parts: list, per_example: bool) -> list:
    """One M per output: a Split along F giving (1, ΣK, ΣK) — MatMul broadcasts it over the batch — or, per example,
    a Gather per output giving (batch, ΣK, ΣK) (ONNX Runtime fuses the Gathers into one Split)."""
    if not per_example:
        graph.node.append(helper.make_node("Split", [m_all], parts, name=f"{m_all}/split", axis=0,
                                           num_outputs=len(parts)))
        return parts
    for j, part in enumerate(parts):
        graph.node.append(helper.make_node("Gather", [m_all, _const(graph, f"{part}/index", j)], [part], name=part,
                                           axis=1))
    return parts


def _add_branch(graph, m: str, output: str, slots: list, subspace: Subspace, width: int):
    """δ = ((x · [C_A,m]ᵀ) · M_f) · [C_B,m]ᵀ for the modules writing `output` (the f-th of its family); its consumers
    then read output + δ. `m`: its M, (1, ΣK, ΣK) or per example (batch, ΣK, ΣK). The components stay constants."""
    p = f"/edge_lorax{output.rsplit('/MatMul', 1)[0]}"
    cat = np.concatenate([subspace.modules[s.module].components_A for s in slots], axis=0).T  # (in, ΣK)
    cbt = np.zeros((cat.shape[1], width), np.float32)  # (ΣK, width): each C_Bᵀ at its module's rows and columns
    row = 0
    for s in slots:
        cb = subspace.modules[s.module].components_B[s.row:s.row + s.hi - s.lo]  # (its rows here, K)
        cbt[row:row + cb.shape[1], s.lo:s.hi] = cb.T
        row += cb.shape[1]
    graph.node.extend([
        helper.make_node("MatMul", [slots[0].x, _init(graph, f"{p}/components_A_t", cat)], [f"{p}/h"], name=f"{p}/h"),
        helper.make_node("MatMul", [f"{p}/h", m], [f"{p}/g"], name=f"{p}/g"),  # (…, ΣK)
        helper.make_node("MatMul", [f"{p}/g", _init(graph, f"{p}/components_B_t", cbt)], [f"{p}/delta"],
                         name=f"{p}/delta"),  # (…, width)
    ])
    for node in graph.node:
        node.input[:] = [f"{p}/sum" if i == output else i for i in node.input]
    graph.node.append(helper.make_node("Add", [output, f"{p}/delta"], [f"{p}/sum"], name=f"{p}/sum"))


def _width(graph, output: str) -> int:
    """Columns of a projection output: its MatMul(NBits) weight's N."""
    node = _producers(graph)[output]
    if node.op_type == "MatMulNBits":
        return next(a.i for a in node.attribute if a.name == "N")
    weight = next(t for t in graph.initializer if t.name == node.input[1])
    return weight.dims[-1]


def add_coefficients(model: onnx.ModelProto, subspace: Subspace, config: dict, defaults: dict,
                     per_example: bool = False) -> onnx.ModelProto:
    """The builder's graph with every subspace module's low-rank path and its coefficient inputs (defaults: user.npz
    tensors, (r, K) / (K, r) float32; per example (1, r, K) / (1, K, r), broadcast over the batch when not fed);
    returns a new proto (topologically sorted) and leaves `model` untouched."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    groups: dict = {}
    for slot in find_slots(out, subspace, config):
        groups.setdefault(slot.output, []).append(slot)
    families: dict = {}  # outputs of one width whose modules have the same (K, r) in the same order
    for output, slots in groups.items():
        shape = tuple((subspace.modules[s.module].k, subspace.modules[s.module].rank) for s in slots)
        families.setdefault((_width(out.graph, output), shape), []).append((output, slots))
    declared = set()  # a module split over two MatMuls (Phi-3's gate_up_proj) has one pair of inputs
    for i, ((width, _), outputs) in enumerate(families.items()):
        for _, slots in outputs:
            for slot in slots:
                if slot.module not in declared:
                    _coefficient_inputs(out.graph, slot, subspace.modules[slot.module], per_example)
                    declared.add(slot.module)
        mixes = _assemble(out.graph, f"/edge_lorax/family{i}", outputs, subspace, per_example)
        for m, (output, slots) in zip(mixes, outputs):
            _add_branch(out.graph, m, output, slots, subspace, width)
    sort_nodes(out.graph)
    return add_input_defaults(out, defaults)
