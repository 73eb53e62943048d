"""Fused attention for encoder bundles (BERT family): one com.microsoft `Attention` per layer, low-rank branches inside.

ONNX Runtime's transformer optimizer fuses a plain BERT's self-attention into `Attention`, but not an edge-lorax
graph: the low-rank Adds on q / v (and the transformers-5 mask and SDPA patterns) break its matcher. This pass does
that surgery itself, as one Model -> Model pass, then lets ONNX Runtime's optimizer add SkipLayerNormalization and
BiasGelu (what optimum's ORTOptimizer O2 does to a plain model; EmbedLayerNormalization stays off, as in O2).

Per layer, found by the graph's structure (never by node names; TorchScript and SDPA / eager exports alike): the
Softmax, the q and k projections behind its scores, the v projection behind its MatMul, and the output dense MatMul
that reads the context. A projection is `MatMul(x, W) + b`, optionally `+ δ` with the coefficient branch

    δ = (((x · C_Aᵀ) · coeff_Aᵀ) · coeff_Bᵀ) · C_Bᵀ = ((x · C_Aᵀ) · M) · C_Bᵀ,   M = (coeff_B · coeff_A)ᵀ   # (K, K)

Everything between the projections and the dense MatMul becomes

    g     = (x · [C_A,iᵀ]_i) · blockdiag(M_i)                  # (B, S, in) · (in, ΣK) · (ΣK, ΣK) -> (B, S, ΣK)
    X_ext = Concat(x, g)                                      # (B, S, in + ΣK)
    W_ext = [[W_qᵀ, W_kᵀ, W_vᵀ], [C_B,iᵀ at module i's q/k/v columns]]   # (in + ΣK, 3·hidden), a constant
    ctx   = Attention(X_ext, W_ext, [b_q, b_k, b_v], attention_mask as int32 (B, S))   # (B, S, hidden)

so the per-token cost over the plain fused model is one (in × ΣK) and one (ΣK × ΣK) MatMul, a Concat and ΣK more
rows in the q/k/v GEMM (MiniLM, q and v at K=8: 16 of 384). Every blockdiag(M_i) of the graph is assembled per run
from the coefficient inputs, as in export/decoder.py (two Concats, one batched product, a block mask, one Split), so
the components stay constants and the weights stay pre-packed. The coefficient inputs keep their names, shapes and
defaults (optional inputs): a user.npz or `.onnx_adapter` feeds the fused graph as it feeds the unfused one; per-
example graphs (coefficients (batch, r, K)) fuse too, with one M per example. The mask is the raw 2-D attention_mask
(any padding, left or right), not optimum's 1-D sequence lengths (right padding only).

Does not: fuse modules other than the self-attention's query / key / value (a branch on a dense layer, or any
attention the matcher does not recognise, refuses the whole graph: FuseRefused, with the reason), causal / decoder
attention (the check below refuses it), int8 or .ort variants. `fuse_attention` ends with a check: the fused and the
unfused graph run on the same sample tokens with the default and random coefficients and must agree (CHECK_TOLERANCE).
"""

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_lorax.export.passes import sort_nodes
from edge_lorax.formats import architectures, names

DOMAIN = "com.microsoft"
CHECK_TOLERANCE = 1e-4  # max abs diff fused vs unfused (ONNX Runtime both), x max(1, |output|)
_DATA_ONLY = {"Reshape": 1, "Expand": 1, "Tile": 1, "Slice": 1, "Unsqueeze": 1, "Squeeze": 1}  # inputs past data
_STOP = ("Shape", "Size", "ConstantOfShape", "Constant")  # no data flows through these
_ELEMENTWISE_AFTER_SOFTMAX = ("IsNaN", "Where", "Cast", "Dropout", "Identity")  # SDPA export: NaN rows -> 0
_MAX_WALK = 256  # nodes per backward walk (the shared mask subgraph included); beyond this it is not BERT


class FuseRefused(ValueError):
    """The graph cannot be fused; str(e) says why. The unfused graph is still correct (export keeps only it)."""


@dataclass(frozen=True)
class Branch:
    """One module's low-rank path: coefficient input names and its constant components."""

    coeff_a: str  # (r, K) or per example (batch, r, K)
    coeff_b: str  # (K, r) or (batch, K, r)
    components_a_t: np.ndarray = field(repr=False)  # (in, K)
    components_b_t: np.ndarray = field(repr=False)  # (K, out)


@dataclass(frozen=True)
class Projection:
    """`x · W + b (+ δ)`: the tensor it writes, its input and constants, its low-rank branch if any."""

    output: str
    x: str
    weight: np.ndarray = field(repr=False)  # (in, out)
    bias: np.ndarray = field(repr=False)  # (out,)
    branch: Branch | None = None


@dataclass(frozen=True)
class Layer:
    """One self-attention: q, k, v projections of a shared x, and the dense MatMul reading the context."""

    q: Projection
    k: Projection
    v: Projection
    dense: str  # name of the MatMul node whose input 0 is the context (B, S, hidden)

    @property
    def branches(self) -> list:
        """(role index 0/1/2 = q/k/v, Branch) of the projections that have one."""
        return [(i, p.branch) for i, p in enumerate((self.q, self.k, self.v)) if p.branch is not None]


class _Graph:
    """Read-only indexes over a GraphProto: producers, consumers, constants (initializers that are not inputs)."""

    def __init__(self, graph):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inputs = {i.name for i in graph.input}
        self.inits = {t.name: t for t in graph.initializer}

    def const(self, name: str):
        """The value of a constant tensor (initializer that is not a graph input, Constant node, or Identity of one),
        else None."""
        if name in self.inits and name not in self.inputs:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":  # the exporter's de-duplicated initializers
            return self.const(node.input[0])
        if node is not None and node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            return numpy_helper.to_array(attr.t) if attr is not None else None
        return None

    def op(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def _plain_projection(gr: _Graph, out: str):
    """`Add(b, MatMul(x, W))` with constant 2-D W and 1-D b (either Add order) -> (x, W, b), else None."""
    add = gr.op(out, "Add")
    if add is None or len(add.input) != 2:
        return None
    for bias_name, mm_name in (add.input, add.input[::-1]):
        bias, mm = gr.const(bias_name), gr.op(mm_name, "MatMul")
        if bias is None or bias.ndim != 1 or mm is None:
            continue
        weight = gr.const(mm.input[1])
        if weight is not None and weight.ndim == 2 and weight.shape[1] == bias.shape[0]:
            return mm.input[0], weight, bias
    return None


def _coeff_of(gr: _Graph, name: str):
    """`Transpose(<coefficient input>)` (last two axes swapped) -> the input's name, else None."""
    tr = gr.op(name, "Transpose")
    if tr is None or tr.input[0] not in gr.inputs or gr.const(tr.input[0]) is not None:
        return None
    perm = list(next((a.ints for a in tr.attribute if a.name == "perm"), []))
    n = len(perm)
    return tr.input[0] if n >= 2 and perm == list(range(n - 2)) + [n - 1, n - 2] else None


def _branch(gr: _Graph, delta: str, x: str):
    """δ = MatMul(MatMul(MatMul(MatMul(x, C_Aᵀ), T(coeff_A)), T(coeff_B)), C_Bᵀ) -> Branch, else None."""
    m4 = gr.op(delta, "MatMul")
    m3 = gr.op(m4.input[0], "MatMul") if m4 is not None else None
    m2 = gr.op(m3.input[0], "MatMul") if m3 is not None else None
    m1 = gr.op(m2.input[0], "MatMul") if m2 is not None else None
    if m1 is None or m1.input[0] != x:
        return None
    cat, cbt = gr.const(m1.input[1]), gr.const(m4.input[1])
    ca, cb = _coeff_of(gr, m2.input[1]), _coeff_of(gr, m3.input[1])
    if cat is None or cbt is None or ca is None or cb is None or cat.ndim != 2 or cbt.ndim != 2:
        return None
    return Branch(ca, cb, cat.astype(np.float32), cbt.astype(np.float32))


def _projection(gr: _Graph, out: str):
    """A projection writing `out`: plain, or `Add(plain, δ)` with a coefficient branch on the same x; else None."""
    plain = _plain_projection(gr, out)
    if plain is not None:
        return Projection(out, *plain)
    add = gr.op(out, "Add")
    if add is None or len(add.input) != 2:
        return None
    for base, delta in (add.input, add.input[::-1]):
        plain = _plain_projection(gr, base)
        if plain is None:
            continue
        branch = _branch(gr, delta, plain[0])
        if branch is not None:
            return Projection(out, *plain, branch)
    return None


def _walk_back(gr: _Graph, start: str) -> tuple:
    """Projections reached going backward from `start` over data inputs, stopping at each projection; (found
    {output: Projection}, the nodes passed). Shape-only inputs (Reshape's shape, Shape nodes) are not followed."""
    found, seen, passed, frontier = {}, set(), [], [start]
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        proj = _projection(gr, t)
        if proj is not None:
            found[t] = proj
            continue
        node = gr.producer.get(t)
        if node is None or node.op_type in _STOP:
            continue
        passed.append(node)
        if len(passed) > _MAX_WALK:
            raise FuseRefused(f"no attention pattern near {start!r}: the walk back did not reach q/k projections")
        keep = _DATA_ONLY.get(node.op_type, len(node.input))
        frontier.extend(i for i in node.input[:keep] if i)
    return found, passed


def _after_softmax(gr: _Graph, softmax) -> tuple:
    """(the MatMul(P, V) node, P's tensor): forward from the Softmax through NaN-guards (IsNaN / Where) only."""
    probs, hops = softmax.output[0], 0
    while hops < 4:
        users = [n for n in gr.consumers.get(probs, []) if n.op_type not in _STOP]
        mm = [n for n in users if n.op_type == "MatMul" and n.input[0] == probs]
        if len(mm) == 1 and len(users) == 1:
            return mm[0], probs
        guard = [n for n in users if n.op_type in _ELEMENTWISE_AFTER_SOFTMAX and n.op_type != "IsNaN"]
        if len(guard) != 1 or any(n.op_type not in _ELEMENTWISE_AFTER_SOFTMAX for n in users):
            break
        probs, hops = guard[0].output[0], hops + 1
    raise FuseRefused(f"Softmax {softmax.name!r}: its probabilities do not go straight into one MatMul with V")


def _dense_after(gr: _Graph, context_mm) -> str:
    """The MatMul with a constant 2-D weight reached from MatMul(P, V) through Transpose / Reshape only."""
    t = context_mm.output[0]
    for _ in range(4):
        users = [n for n in gr.consumers.get(t, []) if n.op_type not in _STOP]  # Shape: read for reshapes only
        if len(users) != 1:
            break
        node = users[0]
        if node.op_type == "MatMul" and node.input[0] == t and (w := gr.const(node.input[1])) is not None and w.ndim == 2:
            return node.name
        if node.op_type not in ("Transpose", "Reshape"):
            break
        t = node.output[0]
    raise FuseRefused(f"MatMul {context_mm.name!r}: the attention context does not reach an output dense MatMul "
                      "through Transpose / Reshape alone")


def _layer(gr: _Graph, softmax) -> Layer:
    scores, passed = _walk_back(gr, softmax.input[0])
    if len(scores) != 2:
        raise FuseRefused(f"Softmax {softmax.name!r}: {len(scores)} projections behind its scores, expected q and k")
    qk = [n for n in passed if n.op_type == "MatMul" and gr.const(n.input[1]) is None]
    sides = [[set(_walk_back(gr, mm.input[i])[0]) for i in (0, 1)] for mm in qk]
    pairs = [(a, b) for a, b in sides if len(a) == 1 and len(b) == 1 and a != b]
    if len(pairs) != 1:
        raise FuseRefused(f"Softmax {softmax.name!r}: no single MatMul(Q, Kᵀ) behind its scores")
    (q_out,), (k_out,) = pairs[0]
    pv, probs = _after_softmax(gr, softmax)
    values, _ = _walk_back(gr, pv.input[1])
    if len(values) != 1:
        raise FuseRefused(f"MatMul {pv.name!r}: {len(values)} projections behind V, expected one")
    q, k, v = scores[q_out], scores[k_out], next(iter(values.values()))
    if not q.x == k.x == v.x:
        raise FuseRefused(f"Softmax {softmax.name!r}: q, k and v read different tensors (not self-attention)")
    return Layer(q, k, v, _dense_after(gr, pv))


def find_layers(model: onnx.ModelProto) -> list:
    """Every self-attention of the graph, in graph order; FuseRefused when one is not the expected pattern or when
    a coefficient branch sits anywhere but on a layer's q / k / v (a dense layer's branch cannot be fused here)."""
    gr = _Graph(model.graph)
    layers = [_layer(gr, n) for n in model.graph.node if n.op_type == "Softmax"]
    if not layers:
        raise FuseRefused("no Softmax in the graph: nothing to fuse")
    fused = {b.coeff_a for layer in layers for _, b in layer.branches}
    coeffs = sorted(i.name for i in model.graph.input if i.name.endswith("." + names.COEFF_A) and i.name in gr.inits)
    other = [c for c in coeffs if c not in fused]
    if other:
        raise FuseRefused(f"{len(other)} coefficient branch(es) outside self-attention q/k/v (e.g. "
                          f"{names.split_key(other[0])[0]}); only query / key / value branches are fused")
    return layers


def _init(graph, name: str, array, dtype=np.float32) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(array, dtype=dtype, order="C"), name))  # keeps 0-d
    return name


def _assemble(graph, p: str, layers: list, shape: tuple, per_example: bool, opset: int) -> list:
    """blockdiag(M_i) of every layer of one family (same branches' (K, r) in the same roles) at once: (1, ΣK, ΣK)
    per layer, or per example (batch, ΣK, ΣK). M_i = coeff_A,iᵀ · coeff_B,iᵀ; one batched T·U gives the cross
    blocks too, a constant block mask zeroes them (export/decoder.py does the same for decoder families)."""
    f, per = len(layers), len(shape)
    k, r = shape[0]
    mask = np.kron(np.eye(per, dtype=np.float32), np.ones((k, k), np.float32))  # (S·K, S·K)
    lead, t = ([0], [0, 1, 2, 4, 3]) if per_example else ([], [0, 1, 3, 2])  # Reshape's 0 keeps the batch dim
    a = [b.coeff_a for layer in layers for _, b in layer.branches]
    b = [br.coeff_b for layer in layers for _, br in layer.branches]
    graph.node.extend([
        helper.make_node("Concat", a, [f"{p}/A"], name=f"{p}/A", axis=-2),  # (F·S·r, K)
        helper.make_node("Reshape", [f"{p}/A", _init(graph, f"{p}/A_shape", lead + [f, per, r, k], np.int64)],
                         [f"{p}/A4"], name=f"{p}/A4"),
        helper.make_node("Transpose", [f"{p}/A4"], [f"{p}/At"], name=f"{p}/At", perm=t),  # (F, S, K, r)
        helper.make_node("Reshape", [f"{p}/At", _init(graph, f"{p}/T_shape", lead + [f, per * k, r], np.int64)],
                         [f"{p}/T"], name=f"{p}/T"),  # (F, S·K, r)
        helper.make_node("Concat", b, [f"{p}/B"], name=f"{p}/B", axis=-2),  # (F·S·K, r)
        helper.make_node("Reshape", [f"{p}/B", _init(graph, f"{p}/B_shape", lead + [f, per * k, r], np.int64)],
                         [f"{p}/B3"], name=f"{p}/B3"),
        helper.make_node("Transpose", [f"{p}/B3"], [f"{p}/U"], name=f"{p}/U",
                         perm=[0, 1, 3, 2] if per_example else [0, 2, 1]),  # (F, r, S·K)
        helper.make_node("MatMul", [f"{p}/T", f"{p}/U"], [f"{p}/TU"], name=f"{p}/TU"),  # (F, S·K, S·K)
        helper.make_node("Mul", [f"{p}/TU", _init(graph, f"{p}/block_mask", mask)], [f"{p}/M"], name=f"{p}/M"),
    ])
    parts = [f"{p}/M{j}" for j in range(f)]
    if per_example:
        for j, part in enumerate(parts):
            graph.node.append(helper.make_node("Gather", [f"{p}/M", _init(graph, f"{part}/index", j, np.int64)], [part],
                                               name=part, axis=1))  # (batch, S·K, S·K)
    else:
        even = {"num_outputs": f} if opset >= 18 else {}  # before opset 18 Split divides evenly by its outputs
        graph.node.append(helper.make_node("Split", [f"{p}/M"], parts, name=f"{p}/split", axis=0, **even))
    return parts


def _packed(layer: Layer) -> tuple:
    """(W_ext (in + ΣK, 3·hidden), bias (3·hidden,), C_Aᵀ stacked (in, ΣK) or None)."""
    projs = (layer.q, layer.k, layer.v)
    weight = np.concatenate([p.weight for p in projs], axis=1)  # (in, 3·hidden)
    bias = np.concatenate([p.bias for p in projs])
    cols = np.cumsum([0] + [p.weight.shape[1] for p in projs])
    rows = []
    for role, br in layer.branches:
        block = np.zeros((br.components_b_t.shape[0], weight.shape[1]), np.float32)  # (K, 3·hidden)
        block[:, cols[role]:cols[role + 1]] = br.components_b_t
        rows.append(block)
    if not rows:
        return weight, bias, None
    cat = np.concatenate([br.components_a_t for _, br in layer.branches], axis=1)  # (in, ΣK)
    return np.concatenate([weight, *rows], axis=0), bias, cat


def _prune(graph):
    """Drop nodes that no graph output needs (graph topologically sorted), then initializers nobody reads (optional
    inputs' defaults stay)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inputs = {i.name for i in graph.input}
    used = [t for t in graph.initializer if t.name in needed or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(used)
    del graph.value_info[:]  # stale shapes of removed tensors; ONNX Runtime infers them again


def _coeff_rank(model: onnx.ModelProto, name: str) -> int:
    vi = next(i for i in model.graph.input if i.name == name)
    return len(vi.type.tensor_type.shape.dim)


def fuse_attention_graph(model: onnx.ModelProto, num_heads: int) -> onnx.ModelProto:
    """The surgery alone (no ONNX Runtime optimizer, no check): a new proto, `model` untouched."""
    layers = find_layers(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    any_branch = next((b for layer in layers for _, b in layer.branches), None)
    per_example = any_branch is not None and _coeff_rank(model, any_branch.coeff_a) == 3
    mask = _int32_mask(graph)
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 17)
    mixes = {}
    for f, ((_, shape), members) in enumerate(_families(graph, layers).items()):
        parts = _assemble(graph, f"/edge_lorax/fuse/family{f}", [layers[i] for i in members], shape, per_example, opset)
        mixes.update(zip(members, parts))
    dense = {layer.dense: i for i, layer in enumerate(layers)}
    for node in list(graph.node):
        if node.name in dense:
            i = dense[node.name]
            node.input[0] = _attention(graph, layers[i], f"/edge_lorax/fuse/layer{i}", mixes.get(i), mask, num_heads)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    sort_nodes(graph)  # the new nodes were appended after their consumers; _prune walks in topological order
    _prune(graph)
    return out


def _int32_mask(graph) -> str | None:
    """The Attention op's mask_index: attention_mask cast to int32 (one Cast for every layer), or None without one."""
    if names.ATTENTION_MASK not in {i.name for i in graph.input}:
        return None
    mask = "/edge_lorax/fuse/mask_int32"
    graph.node.append(helper.make_node("Cast", [names.ATTENTION_MASK], [mask], name=mask, to=onnx.TensorProto.INT32))
    return mask


def _families(graph, layers: list) -> dict:
    """(branch roles, ((K, r) per branch)) -> indices of the layers of that shape, which share one assembly."""
    inits = {t.name: t for t in graph.initializer}
    families: dict = {}
    for i, layer in enumerate(layers):
        shape = tuple((br.components_a_t.shape[1], numpy_helper.to_array(inits[br.coeff_a]).shape[-2])
                      for _, br in layer.branches)
        if shape:
            families.setdefault((tuple(r for r, _ in layer.branches), shape), []).append(i)
    return families


def _attention(graph, layer, p: str, mix: str | None, mask: str | None, num_heads: int) -> str:
    """One layer's Attention node (packed q/k/v weights; with branches, x extended by its low-rank features
    x Cᴀᵀ · mix); returns its context output (B, S, hidden)."""
    weight, bias, cat = _packed(layer)
    x = layer.q.x
    if cat is not None:
        graph.node.extend([
            helper.make_node("MatMul", [x, _init(graph, f"{p}/components_A_t", cat)], [f"{p}/h"], name=f"{p}/h"),
            helper.make_node("MatMul", [f"{p}/h", mix], [f"{p}/g"], name=f"{p}/g"),  # (B, S, ΣK)
            helper.make_node("Concat", [x, f"{p}/g"], [f"{p}/x_ext"], name=f"{p}/x_ext", axis=-1),
        ])
        x = f"{p}/x_ext"  # (B, S, in + ΣK)
    graph.node.append(helper.make_node(
        "Attention", [x, _init(graph, f"{p}/qkv_weight", weight), _init(graph, f"{p}/qkv_bias", bias)]
        + ([mask] if mask else []), [f"{p}/context"], name=f"{p}/Attention", domain=DOMAIN, num_heads=num_heads))
    return f"{p}/context"


def _ort_fusions(model: onnx.ModelProto, num_heads: int, hidden: int, model_type=None) -> onnx.ModelProto:
    """ONNX Runtime's transformer optimizer on the fused graph: SkipLayerNormalization, BiasGelu (+ LayerNorm, Gelu
    shapes) as in optimum's O2; no EmbedLayerNormalization (O2 leaves it off too), python fusions only (opt_level 0).
    Its model_type is formats.architectures.fusion_type (the BERT-family fusions for any type the table leaves open)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fusion = architectures.fusion_type(model_type)
    opts = FusionOptions(fusion)
    opts.enable_attention = False  # done above
    opts.enable_embed_layer_norm = False
    import logging

    level = logging.getLogger("onnxruntime.transformers").level
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        optimized = optimize_model(model, model_type=fusion, num_heads=num_heads, hidden_size=hidden, opt_level=0,
                                   optimization_options=opts)
    finally:
        logging.getLogger("onnxruntime.transformers").setLevel(level)
    return optimized.model


def _sample_feeds(model: onnx.ModelProto, seed: int) -> list:
    """Token feeds (right- and left-padded rows) and [{} (defaults), random U(-1, 1) coefficients] for the check."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 90, size=(3, 9), dtype=np.int64)  # 90: within any vocabulary the tiny test models have
    mask = np.ones((3, 9), np.int64)
    mask[1, 6:] = 0
    mask[2, :3] = 0
    tokens = {names.INPUT_IDS: ids, names.ATTENTION_MASK: mask}
    tokens = {k: v for k, v in tokens.items() if k in {i.name for i in model.graph.input}}
    inits = {t.name: t for t in model.graph.initializer}
    coeffs = {}
    for i in model.graph.input:
        if i.name in inits and not i.name.startswith(names.HEAD_PREFIX):
            shape = numpy_helper.to_array(inits[i.name]).shape
            shape = (3, *shape[1:]) if len(shape) == 3 else shape
            coeffs[i.name] = (rng.random(shape, dtype=np.float32) * 2 - 1).astype(np.float32)
    return [(tokens, {}), (tokens, coeffs)]


def check_fused(unfused: onnx.ModelProto, fused: onnx.ModelProto, seed: int = 0) -> float:
    """Max abs diff (relative to max(1, |output|)) of every output, fused vs unfused, ONNX Runtime on one thread;
    FuseRefused above CHECK_TOLERANCE (a causal mask, another scale: anything the matcher got wrong)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    sessions = [ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                for m in (unfused, fused)]
    worst = 0.0
    for tokens, coeffs in _sample_feeds(unfused, seed):
        want, got = (s.run(None, {**tokens, **coeffs}) for s in sessions)
        for w, g_ in zip(want, got):
            worst = max(worst, float(np.abs(w - g_).max()) / max(1.0, float(np.abs(w).max())))
    if not worst <= CHECK_TOLERANCE:  # NaN fails too
        raise FuseRefused(f"the fused graph differs from the unfused one by {worst:.3g} (> {CHECK_TOLERANCE:g}); "
                          "the attention is not plain bidirectional BERT attention")
    return worst


def fuse_attention(model: onnx.ModelProto, num_heads: int, hidden: int, check: bool = True) -> onnx.ModelProto:
    """The fused graph of an unfused encoder graph: Attention per layer with the coefficient branches inside, then
    ONNX Runtime's SkipLayerNormalization / BiasGelu; checked against `model` unless check=False. FuseRefused (with
    the reason) when it cannot be fused. Returns a new proto; `model` is untouched."""
    fused = _ort_fusions(fuse_attention_graph(model, num_heads), num_heads, hidden)
    lost = sorted({i.name for i in model.graph.input} - {i.name for i in fused.graph.input})
    if lost:
        raise FuseRefused(f"fusion lost graph inputs {lost[:3]}")
    if check:
        check_fused(model, fused)
    return fused


def fused_ops(model: onnx.ModelProto) -> dict:
    """{op type: count} of the contrib ops in a graph (Attention, SkipLayerNormalization, BiasGelu, ...)."""
    out: dict = {}
    for node in model.graph.node:
        if node.domain == DOMAIN:
            out[node.op_type] = out.get(node.op_type, 0) + 1
    return dict(sorted(out.items()))
