"""The ExecuTorch export target (`executorch`): one `.pte` program per base model + subspace whose method inputs are the
token inputs, then the user's coefficient (and head) tensors, in the manifest's ordered `user_inputs`.

Folder: model.pte (base weights and subspace components as constants, XNNPACK-delegated, fp32, or with --quantize
int8 the base model's Linear weights int8 per output channel with int8 activations quantised per run (ExecuTorch's
XNNPACKQuantizer, dynamic; the coefficient path stays fp32, so users still swap as inputs); dynamic batch
1..MAX_BATCH and sequence 2..max positions), defaults.npz (every user input's export default, a user file of the
subspace: the --coeffs user, zero-padded, its head or the checkpoint's / zeros), tokenizer files, config.json and
manifest.json (target `executorch`). A user file feeds the program by the manifest's order (runtime.pte reads one
into that ordered list without torch); an app loads the program once, sets the user's tensors as method inputs and
executes (docs/bundle.md, "ExecuTorch").
Verified before the folder appears, with ExecuTorch's Python runtime (it imports torch, so the check lives here on
the export side): the program against the eager torch wrapper over the export's coefficient sets (defaults and
random users: max |Δ| <= TOLERANCE x scale, and the coefficient response), and against the ONNX graph the
onnx-encoder target would write (ONNX Runtime, same texts and users; built in memory, not shipped).
Refuses (`check`, before any work): decoders (--task causal-lm: the KV-cache .pte is not built), --quantize other
than int8, --per-example, --merge, --ort-format, --fuse, --builder-option, --exporter dynamo; a missing executorch package.
--gradient does not apply (no gradient program) and is ignored. Does not: read the common inputs (export.bundle
does), serve users (ExecuTorch's C++ / Kotlin / Swift runtime does on the device).
"""

from pathlib import Path

import numpy as np

from edge_lorax import __version__
from edge_lorax.builder.models import portable_model_id
from edge_lorax.export import encoder_bundle, executorch_decoder
from edge_lorax.export import graph as g
from edge_lorax.export.config import ExportJob
from edge_lorax.export.executorch_program import DEFAULTS_FILE, PTE_FILE, load_method, quiet, unsupported_flags
from edge_lorax.export.verify import (
    COEFF_SCALES,
    QUANTIZED,
    RESPONSE_MIN,
    TOLERANCE_RULE,
    TOLERANCES,
    QuantizationError,
    _feed_sets,
    _torch_output,
    cosine,
)
from edge_lorax.formats import names
from edge_lorax.formats.bundle import TARGET_EXECUTORCH, write_manifest
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.user import User, split_inputs, write_user

MAX_BATCH = 64  # the program's batch bound (ExecuTorch plans memory for the upper bounds of dynamic dims)
TOLERANCE = 1e-4  # max |Δ| / scale against torch and against ONNX Runtime, as the fp32 ONNX graph's (export.verify)
INSTALL = "pip install 'edge-lorax[executorch]'"


def check(job: ExportJob):
    """What the ExecuTorch target does not offer, refused before any work (one line)."""
    c = job.config
    if job.task == names.TASK_CAUSAL_LM:  # a decoder: the static-KV-cache program (export.executorch_decoder)
        return executorch_decoder.check(job)
    unsupported = unsupported_flags(c, quantize=(None, "int8"))
    if unsupported:
        raise InputError(f"{', '.join(unsupported)}: not offered by --target executorch (one fp32 XNNPACK program, one "
                         "user per run, fp32 or --quantize int8); drop them, or drop --target for the ONNX bundle")
    try:
        import executorch.exir  # noqa: F401
    except ImportError as e:
        raise InputError(f"--target executorch needs the executorch package ({e.name} is missing): {INSTALL}") from e


def write(job: ExportJob, tmp: Path):
    """Lower, verify and write the .pte bundle into the (temporary) folder `tmp`, manifest last."""
    if job.task == names.TASK_CAUSAL_LM:
        return executorch_decoder.write(job, tmp)
    job.say("loading the model and injecting the subspace")
    graph, _ = encoder_bundle.prepare_graphs(job.path, job.subspace, job.coeffs, job.task, job.labels, False, False)
    side = encoder_bundle._write_side_files(tmp, job.path, graph, None, None)  # tokenizer, config.json (+ ST files)
    side["defaults"] = _write_defaults(tmp, graph, job.subspace.fingerprint, job.coeffs)
    precision = job.config.quantize or "fp32"
    job.say(f"exporting and lowering to ExecuTorch (XNNPACK, {precision})")
    (tmp / PTE_FILE).write_bytes(lower(graph, precision))
    job.say("verifying the program against torch and ONNX Runtime")
    tokens = encoder_bundle._verify_tokens(tmp, graph.wrapper.model.config.vocab_size)
    checks = verify(tmp / PTE_FILE, graph, tokens, precision)
    write_manifest(tmp, _manifest(job, graph, {"pte": PTE_FILE, **side}, checks))


def _write_defaults(tmp: Path, graph: g.Prepared, fingerprint: str, coeffs: User | None) -> str:
    """defaults.npz: every user input's default as a user file (what an app feeds for inputs a user lacks)."""
    coefficients, head = split_inputs({n: graph.defaults[n] for n in graph.spec.feed_names})
    meta = {"source": graph.head_source or "zeros", **({"labels": coeffs.meta["labels"]}
                                                       if coeffs is not None and coeffs.meta.get("labels") else {})}
    write_user(User(fingerprint, coefficients, head, meta), tmp / DEFAULTS_FILE)
    return DEFAULTS_FILE


def _example_args(graph: g.Prepared) -> tuple:
    """Trace inputs: sample tokens (batch 2, seq 7), then every user input's default, in the method's order."""
    import torch

    tokens = g.sample_tokens(graph.wrapper.model.config.vocab_size)
    return (*(torch.from_numpy(tokens[s.name]) for s in graph.spec.tokens),
            *(torch.from_numpy(np.ascontiguousarray(graph.defaults[n])) for n in graph.spec.feed_names))


def lower(graph: g.Prepared, precision: str = "fp32") -> bytes:
    """torch.export (dynamic batch and sequence), int8 quantisation if asked -> edge dialect, XNNPACK partitions ->
    the .pte bytes."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    positions = int(getattr(graph.wrapper.model.config, "max_position_embeddings", 512) or 512)
    batch, seq = torch.export.Dim("batch", min=1, max=MAX_BATCH), torch.export.Dim("sequence", min=2, max=positions)
    tokens = [{0: batch, 1: seq} for _ in graph.spec.tokens]
    args = _example_args(graph)
    with quiet(), torch.no_grad():
        program = torch.export.export(graph.wrapper, args, dynamic_shapes=(*tokens, tuple(None for _ in
                                                                                          graph.spec.feed_names)),
                                      strict=False)
        if precision == "int8":  # the quantised module takes its inputs flat: one dynamic-shape entry per argument
            program = torch.export.export(quantize_int8(program.module(), args), args, strict=False,
                                          dynamic_shapes=(*tokens, *(None for _ in graph.spec.feed_names)))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    return bytes(lowered.buffer)


def quantize_int8(module, args: tuple):
    """ExecuTorch's XNNPACKQuantizer, dynamic int8 (per-channel weights, per-run activations): it annotates the base
    model's Linear layers only, so the coefficient matmuls (input-dependent operands) stay fp32 and keep responding.
    Its scalar-to-tensor pass is skipped: it serves quantising scalar add / mul, which this config never annotates, and
    it turns the attention mask's integer offset into a float32 constant (an index error at run time)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class LinearOnlyQuantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            return model

    quantizer = LinearOnlyQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                    is_dynamic=True))
    prepared = prepare_pt2e(module, quantizer)
    prepared(*args)  # dynamic activations: one pass records the weights' per-channel ranges
    return convert_pt2e(prepared)


def run_method(method, graph: g.Prepared, tokens: dict, feeds: dict) -> np.ndarray:
    """The task output for `tokens` with `feeds` over the defaults, inputs bound positionally in the method's order."""
    import torch

    args = [torch.from_numpy(tokens[s.name]) for s in graph.spec.tokens]
    args += [torch.from_numpy(np.ascontiguousarray(feeds.get(n, graph.defaults[n]))) for n in graph.spec.feed_names]
    return method.execute(args)[0].numpy()


def _onnx_outputs(graph: g.Prepared, tokens: dict, sets: list) -> list:
    """The onnx-encoder target's fp32 graph (built in memory, not written) on the same tokens and feed sets."""
    import onnxruntime as ort

    from edge_lorax.runtime.bundle import SessionConfig, session_options

    proto = encoder_bundle.build_onnx(graph, "torchscript", {})
    with encoder_bundle.quiet():
        session = ort.InferenceSession(proto.SerializeToString(), session_options(SessionConfig(threads=1)),
                                       providers=["CPUExecutionProvider"])
    return [session.run(None, {**tokens, **feeds})[0] for feeds in sets]


def verify(path: Path, graph: g.Prepared, tokens: dict, precision: str = "fp32") -> dict:
    """The .pte against torch fp32 (defaults + COEFF_SCALES random users) and against ONNX Runtime's fp32 graph;
    above tolerance x scale (fp32 TOLERANCE; int8 export.verify's int8 bound, QuantizationError with the fix) or when
    its output does not follow the coefficients (cosine < RESPONSE_MIN): RuntimeError, nothing written. Returns the
    manifest's `verification`: {precision: vs torch, precision + "_vs_onnx": vs ONNX Runtime}."""
    method, sets = load_method(path), _feed_sets(graph, tokens[names.INPUT_IDS].shape[0])
    got = [run_method(method, graph, tokens, feeds) for feeds in sets]
    want = [_torch_output(graph, tokens, feeds) for feeds in sets]
    onnx_out = _onnx_outputs(graph, tokens, sets)
    scale, tol = max(1.0, max(float(np.abs(w).max()) for w in want)), tolerance(precision)
    checks = {precision: _check(got, want, scale, tol), f"{precision}_vs_onnx": _check(got, onnx_out, scale, tol)}
    for name, c in checks.items():
        other = "ONNX Runtime" if name.endswith("_vs_onnx") else "torch"
        if not c["max_abs_diff"] <= tol * scale and precision in QUANTIZED:
            raise QuantizationError(f"{path.name}: ExecuTorch {precision} differs from {other} by "
                                    f"{c['max_abs_diff']:.3g} > {tol:g} x {scale:.3g}; this model does not keep its "
                                    f"accuracy at {precision}, export it without --quantize; nothing written")
        if not c["max_abs_diff"] <= tol * scale:  # NaN fails too
            raise RuntimeError(f"{path.name}: ExecuTorch differs from {other} by {c['max_abs_diff']:.3g} > {tol:g} x "
                               f"{scale:.3g}; nothing written")
        if len(sets) > 1 and not c["response"] >= RESPONSE_MIN:
            raise RuntimeError(f"{path.name}: its output follows the coefficients with cosine {c['response']:.3f} "
                               f"(< {RESPONSE_MIN}); the coefficient inputs are not wired; nothing written")
    return checks


def tolerance(precision: str) -> float:
    """Max |Δ| / scale allowed: TOLERANCE for fp32 (as the ONNX fp32 graph's), export.verify's int8 bound for int8."""
    return TOLERANCE if precision == "fp32" else TOLERANCES[precision]


def _check(got: list, want: list, scale: float, tol: float) -> dict:
    """One verification entry (the keys describe.verdict reads)."""
    return {"max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(got, want)), "tolerance": tol,
            "scale": scale, "effect": max(float(np.abs(w - want[0]).max()) for w in want),
            "response": cosine(got, want), "response_min": RESPONSE_MIN, "coefficient_sets": len(want)}


def _manifest(job: ExportJob, graph: g.Prepared, files: dict, checks: dict) -> dict:
    """The manifest (docs/formats.md): user_inputs in the method's order, required (a .pte has no optional inputs)."""
    from importlib.metadata import version

    import torch

    spec = graph.spec
    feeds = [{**s.as_dict(), "default": False} for s in spec.feeds]
    tokens = [s.as_dict() for s in spec.tokens]
    return {
        "target": TARGET_EXECUTORCH, "fingerprint": job.subspace.fingerprint, "base_model": portable_model_id(job.path),
        "subspace_base_model": job.subspace.base_model, "task": spec.task, "mode": spec.mode, "user_inputs": feeds,
        "labels": spec.outputs[0].shape[-1] if spec.task in g.HEAD_TASKS else None,
        "pooling": "mean" if spec.task == names.TASK_FEATURES else None,
        "inputs": tokens + feeds, "outputs": [s.as_dict() for s in spec.outputs],
        "coefficients": {s.name: list(s.shape) for s in spec.feeds if s.name in spec.coeff_names},
        "head": {"inputs": {s.name: list(s.shape) for s in spec.feeds if s.name.startswith(names.HEAD_PREFIX)},
                 "default": graph.head_source} if graph.head_source else None,
        "defaults": Path(job.coeffs_path).name if job.coeffs_path else "zeros",
        "method": {"name": "forward", "max_batch": MAX_BATCH, "backend": "XnnpackBackend",
                   "precision": job.config.quantize or "fp32"},
        "files": files, "tolerances": {v: c["tolerance"] for v, c in checks.items()}, "tolerance_rule": TOLERANCE_RULE,
        "verification": checks, "coefficient_scales": list(COEFF_SCALES),
        "exporter": {"name": "torch.export", "edge_lorax": __version__, "torch": torch.__version__,
                     "executorch": version("executorch")},
    }
