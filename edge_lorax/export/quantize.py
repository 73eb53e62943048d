"""Dynamic int8 of the base weights that keeps every coefficient / head input working.

`quantize_dynamic` treats an optional input's default initializer as a weight: it quantizes it and drops the graph
input. So every node that consumes such an input is excluded, and with it the whole low-rank path (the component
MatMuls next to the coefficient MatMuls): base weights go int8, the user's ΔW stays fp32. Verified after writing.
Per-channel weight scales: per-tensor int8 of the MiniLM gave cosine 0.86 to fp32 on a one-word input, per-channel
0.96 (tested: reduce_range and uint8 weights were no better). Does not do static (calibrated) quantization or int4.
"""

from pathlib import Path

import onnx

from edge_lorax.export.passes import overridable

PASS_THROUGH = ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Cast")  # between an input and its MatMul


def _consumers(graph) -> dict:
    out = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _const_matmul(node, inits: set) -> bool:
    return node is not None and node.op_type == "MatMul" and any(i in inits for i in node.input)


def _through(names_in: set, consumers: dict) -> list:
    """Nodes reading `names_in`, following pass-through ops (Transpose of coeff_A) to the op that does the math."""
    found, frontier = [], list(names_in)
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            found.append(node)
            if node.op_type in PASS_THROUGH:
                frontier.extend(node.output)
    return found


def _lowrank_nodes(model: onnx.ModelProto, inputs: list) -> list:
    """Names of the nodes on the low-rank / head path: consumers of `inputs` and their adjacent component MatMuls."""
    graph, consumers = model.graph, _consumers(model.graph)
    inits = {i.name for i in graph.initializer} - set(inputs)
    producer = {o: n for n in graph.node for o in n.output}
    path = {n.name: n for n in _through(set(inputs), consumers)}
    for node in [n for n in path.values() if n.op_type == "MatMul"]:
        near = [producer.get(i) for i in node.input] + [c for o in node.output for c in consumers.get(o, [])]
        path.update({n.name: n for n in near if _const_matmul(n, inits)})
    return sorted(path)


def _check_inputs_survive(path, inputs: list):
    """Every name in `inputs` is still an optional graph input (input + initializer) of the model at `path`."""
    lost = sorted(set(inputs) - set(overridable(onnx.load(str(path), load_external_data=False))))
    if lost:
        raise RuntimeError(f"{path}: quantization dropped coefficient inputs {lost[:3]}; not written")


def quantize_int8(src, dst, inputs: list) -> Path:
    """QInt8 dynamic quantization of src -> dst, excluding the low-rank path of `inputs`; refuses lost inputs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = _lowrank_nodes(onnx.load(str(src)), inputs)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude,
                     extra_options={"MatMulConstBOnly": True})
    _check_inputs_survive(dst, inputs)
    return Path(dst)
