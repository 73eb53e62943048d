"""ModelProto -> ModelProto passes (Olive-style): input defaults, stable node names, dim names, metadata.

`add_input_defaults` gives each coefficient input an initializer of the same name, which makes it an *optional*
input: ONNX Runtime uses the default when the input is not fed, and `RunOptions.add_active_adapter` can supply it.
Each pass returns a new proto and leaves its argument untouched. Does not touch weights or the graph's math.
"""

import numpy as np
import onnx
from onnx import numpy_helper

from edge_lorax.export.graph import GraphSpec


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _declared_shape(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim]


def _check_default(name: str, declared: list, arr: np.ndarray):
    """A default must match the declared rank and every static dim (symbolic dims accept any size, e.g. 1)."""
    if len(declared) != arr.ndim or any(isinstance(d, int) and d != n for d, n in zip(declared, arr.shape)):
        raise ValueError(f"default for {name} has shape {arr.shape}, the graph input is {declared}")


def add_input_defaults(model: onnx.ModelProto, defaults: dict) -> onnx.ModelProto:
    """Append an initializer per named graph input (float32 value); refuses unknown names and existing ones."""
    out = _copy(model)
    inputs = {i.name: i for i in out.graph.input}
    taken = {i.name for i in out.graph.initializer}
    for name in sorted(defaults):
        if name not in inputs:
            raise ValueError(f"{name}: not a graph input; the exporter folded it away or renamed it")
        if name in taken:
            raise ValueError(f"{name}: already has an initializer")
        arr = np.ascontiguousarray(defaults[name], dtype=np.float32)
        _check_default(name, _declared_shape(inputs[name]), arr)
        out.graph.initializer.append(numpy_helper.from_array(arr, name))
    return out


def overridable(model: onnx.ModelProto) -> list:
    """Graph inputs that also have an initializer (the optional inputs), in graph-input order."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name in inits]


def name_dims(model: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """Symbolic dims of inputs and outputs renamed to the spec's (dynamo writes s0, s1, ...)."""
    out = _copy(model)
    wanted = {s.name: s.shape for s in (*spec.tokens, *spec.feeds, *spec.outputs)}
    for vi in (*out.graph.input, *out.graph.output):
        for dim, want in zip(vi.type.tensor_type.shape.dim, wanted.get(vi.name, ())):
            if isinstance(want, str):
                dim.dim_param = want
    return out


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node gets a unique name (`nodes_to_exclude` matches names); unnamed ones become <op>_<index>."""
    out = _copy(model)
    seen = set()
    for i, node in enumerate(out.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return out


def set_metadata(model: onnx.ModelProto, meta: dict) -> onnx.ModelProto:
    """Replace metadata_props with `meta` (str values, sorted keys: the bytes stay deterministic)."""
    out = _copy(model)
    del out.metadata_props[:]
    for key in sorted(meta):
        out.metadata_props.add(key=key, value=str(meta[key]))
    return out


def sort_nodes(graph):
    """Topological order in place, stable (Kahn): a surgery appends its new nodes after their consumers; ValueError
    on a cycle."""
    nodes = list(graph.node)
    made = {o: i for i, n in enumerate(nodes) for o in n.output if o}  # '' marks an omitted optional output
    needs = [{made[t] for t in n.input if t in made} for n in nodes]
    users: dict = {}
    for i, deps in enumerate(needs):
        for d in deps:
            users.setdefault(d, []).append(i)
    ready, order = sorted(i for i, deps in enumerate(needs) if not deps), []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users.get(i, []):
            needs[u].discard(i)
            if not needs[u]:
                ready.append(u)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle after inserting the low-rank branches")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def input_specs(model: onnx.ModelProto) -> list:
    """The graph's inputs in graph order as the manifest lists them: {"name", "dtype", "shape"} (ints and symbolic
    dims; a dim with neither is "?"), plus "default": true for an input an initializer backs (optional)."""
    backed = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        spec = {"name": vi.name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), "shape": shape}
        out.append({**spec, "default": True} if vi.name in backed else spec)
    return out
