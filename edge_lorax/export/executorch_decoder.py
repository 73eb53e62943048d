"""The ExecuTorch target for decoders (`export --model M --target executorch`, a KV-cache model type): one `.pte`
program whose method takes the tokens, their cache positions and the user's coefficient tensors, with the KV cache
inside the program.

Method `forward`, inputs by position: `input_ids` (1, T) int64, `cache_position` (T,) int64 (the absolute positions
of those tokens: 0..T-1 for a prompt, then one position per generated token), then every `<module>.coeff_A` (r, K)
and `coeff_B` (K, r) in the manifest's `user_inputs` order; output `logits` (1, T, vocab) float32. The KV cache is
transformers' static cache (StaticCache, --max-cache-len positions per layer, MAX_CACHE by default) held as mutable
buffers of the program: a call
writes its tokens' keys and values at `cache_position` and attends to positions <= its own, so a new prompt (from
position 0) needs no reset and another user is other tensors on the next call, no reload. fp32, XNNPACK-delegated.
Folder: model.pte, defaults.npz (the --coeffs user or zeros, as a user file), the tokenizer and chat template, the
model's config.json and generation_config.json, manifest.json (target `executorch`, task `causal-lm`).
Verified before the folder appears, with ExecuTorch's Python runtime (it imports torch: export side only): prefill
logits of llm_bundle.VERIFY_PROMPTS against float64 torch for the defaults and two random coefficient sets
(llm_bundle's LLM_TOLERANCE_RULE and response check), and the greedy continuation of the first prompt under the
defaults against torch's (recorded). Refuses (`check`): --quantize, --per-example, --merge, --fuse, --ort-format,
--builder-option, --exporter dynamo. Does not: batch > 1, contexts beyond the cache length, generation (an app's loop, as
docs/bundle.md shows; `greedy` here is the verification's).
"""

import shutil
from pathlib import Path

import numpy as np

from edge_lorax import __version__
from edge_lorax.builder.models import portable_model_id
from edge_lorax.export import executorch_program as program
from edge_lorax.export import llm_bundle
from edge_lorax.export.config import ExportJob
from edge_lorax.formats import architectures, names
from edge_lorax.formats.bundle import TARGET_EXECUTORCH, make_user_inputs, write_manifest
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.tokenizer_files import make_portable
from edge_lorax.formats.user import User, write_user

__all__ = ["MAX_CACHE", "check", "write", "lower", "prefill", "greedy"]

# KV positions per layer the program holds unless --max-cache-len says otherwise. Each decode step attends over all
# of them (the static cache masks the unused ones), so this sets the speed: SmolLM2-135M, 1 thread, decode 60 ms per
# token at 256 vs 142 ms at 1024 (benchmarks/executorch/decoder.md).
MAX_CACHE = 256
CACHE_POSITION = "cache_position"
GREEDY_TOKENS = 8  # of the first verification prompt, defaults, .pte vs torch


def check(job: ExportJob):
    """What the decoder program does not offer, refused before any work (one line); the model type must be one of
    the KV-cache types (transformers' static cache serves them)."""
    c = job.config
    unsupported = program.unsupported_flags(c)
    if unsupported:
        raise InputError(f"{', '.join(unsupported)}: not offered by --target executorch for decoders (one fp32 program "
                         "with a static KV cache, one user per run); drop them, or drop --target for the ONNX bundle")
    if not llm_bundle.is_llm(job.model_config):
        raise InputError(f"{job.path} ({job.model_config.get('model_type')}) with --task causal-lm: --target executorch "
                         f"builds decoders of the KV-cache model types ({', '.join(architectures.kv_cache_types())}); "
                         "export an encoder task, or drop --target")


def write(job: ExportJob, tmp: Path):
    """Lower, verify and write the decoder .pte bundle into the (temporary) folder `tmp`, manifest last."""
    defaults = job.coeffs.inputs() if job.coeffs is not None else llm_bundle._zero_user(job.subspace)
    order = sorted(defaults)  # user_inputs order: by module, coeff_A before coeff_B (names sort so)
    files = {"pte": program.PTE_FILE, "defaults": program.DEFAULTS_FILE, "side": _copy_side_files(job.path, tmp)}
    write_user(User(job.subspace.fingerprint, {k: defaults[k] for k in order}, {},
                    {"source": Path(job.coeffs_path).name if job.coeffs_path else "zeros"}), tmp / program.DEFAULTS_FILE)
    job.say("loading the model, injecting the subspace, exporting and lowering to ExecuTorch (XNNPACK, fp32)")
    net = _load(job)
    (tmp / program.PTE_FILE).write_bytes(lower(net, order, defaults, cache_len(job)))
    job.say("verifying the program against torch")
    check_record = verify(tmp, job, order, defaults)
    write_manifest(tmp, _manifest(job, net.config, order, defaults, files, check_record))


def cache_len(job: ExportJob) -> int:
    """--max-cache-len, else MAX_CACHE."""
    return job.config.max_cache_len or MAX_CACHE


def _load(job: ExportJob):
    """The causal LM in float32 eval mode, subspace injected (coefficients read from a feed at run time), frozen."""
    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_causal_lm

    net = load_causal_lm(job.path)
    inject_subspace(net, job.subspace)
    return net.requires_grad_(False)


class _CachedDecoder:
    """Factory of the exported module: transformers' static-cache wrapper, the coefficients fed as method inputs."""

    def __new__(cls, net, order: list, max_cache_len: int):
        import torch
        from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

        from edge_lorax.builder.inject import set_feed

        net.generation_config.use_cache, net.generation_config.cache_implementation = True, "static"
        inner = TorchExportableModuleWithStaticCache(net, batch_size=1, max_cache_len=max_cache_len)

        class CachedDecoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, cache_position, *coefficients):  # (1, T) int64, (T,) int64, then (r, K) / (K, r)
                # non-strict export swaps module buffers for its own tensors, not the cache object's references to them
                for i, layer in enumerate(self.inner.static_cache.layers):
                    layer.keys, layer.values = getattr(self.inner, f"key_cache_{i}"), getattr(self.inner, f"value_cache_{i}")
                    layer.cumulative_length = getattr(self.inner, f"cumulative_length_{i}")
                set_feed(net, dict(zip(order, coefficients)))
                try:
                    return self.inner(input_ids=input_ids, cache_position=cache_position)  # (1, T, vocab)
                finally:
                    set_feed(net, None)

        return CachedDecoder().eval()


def lower(net, order: list, defaults: dict, max_cache_len: int = MAX_CACHE) -> bytes:
    """torch.export (dynamic token count 1..max_cache_len-1) of the cached decoder -> edge dialect, XNNPACK partitions
    -> the .pte bytes."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = _CachedDecoder(net, order, max_cache_len)
    tokens = torch.arange(4, dtype=torch.long)[None] + 1  # (1, 4)
    args = (tokens, torch.arange(4), *(torch.from_numpy(np.ascontiguousarray(defaults[k])) for k in order))
    count = torch.export.Dim("tokens", min=1, max=max_cache_len - 1)
    with program.quiet(), torch.no_grad():
        exported = torch.export.export(module, args, dynamic_shapes=({1: count}, {0: count}, tuple(None for _ in order)),
                                       strict=False)
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    return bytes(lowered.buffer)


def prefill(method, ids: list, tensors: list) -> np.ndarray:
    """Logits (1, T, vocab) of a prompt from position 0 (the cache's earlier contents are masked out)."""
    import torch

    return method.execute([torch.tensor([ids], dtype=torch.long), torch.arange(len(ids)), *tensors])[0].numpy()


def greedy(method, ids: list, tensors: list, new_tokens: int) -> list:
    """Greedy continuation of `ids` through the program: prefill, then one token per call at the next position."""
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(t)) for t in tensors]
    logits, out = prefill(method, ids, tensors), []
    for step in range(new_tokens):
        out.append(int(logits[0, -1].argmax()))
        logits = method.execute([torch.tensor([[out[-1]]]), torch.tensor([len(ids) + step]), *tensors])[0].numpy()
    return out


def verify(tmp: Path, job: ExportJob, order: list, defaults: dict) -> dict:
    """Prefill logits vs float64 torch (llm_bundle._parity: RuntimeError beyond the rule, nothing written) and the
    defaults' greedy tokens vs torch's; the manifest's `verification` entry."""
    import torch

    method, prompts = program.load_method(tmp / program.PTE_FILE), llm_bundle._prompts(tmp)
    sets = llm_bundle._random_sets(defaults)
    want32, want = llm_bundle._reference_logits(job.path, job.subspace, prompts, sets)
    got = [[prefill(method, ids, [torch.from_numpy(f[k]) for k in order]) for ids in prompts] for f in sets]
    flat = lambda runs: [np.concatenate([x.ravel() for x in r]) for r in runs]  # noqa: E731
    record = llm_bundle._parity(flat(got), flat(want32), flat(want), "fp32", len(sets), "ExecuTorch")
    ours, theirs = greedy(method, prompts[0], [defaults[k] for k in order], GREEDY_TOKENS), _torch_greedy(job, prompts[0], defaults)
    return {**record, "coefficient_sets": len(sets), "prompts": len(prompts),
            "greedy_tokens": {"program": ours, "torch": theirs, "equal": ours == theirs}}


def _torch_greedy(job: ExportJob, ids: list, coefficients: dict) -> list:
    """torch's greedy continuation (float32, the subspace injected with `coefficients`)."""
    import torch

    from edge_lorax.builder.inject import inject_subspace
    from edge_lorax.builder.models import load_causal_lm

    net = load_causal_lm(job.path)
    inject_subspace(net, job.subspace, coeffs=coefficients)
    with torch.no_grad():
        out = net.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False, min_new_tokens=GREEDY_TOKENS)
    return out[0, len(ids):].tolist()


def _copy_side_files(path: Path, tmp: Path) -> list:
    """The model folder's tokenizer files, chat template, config.json and generation_config.json (what an app's
    tokenizer and stop tokens need); tokenizer_config.json made loadable by both transformers lines."""
    copied = [n for n in (*llm_bundle.SIDE_FILES, *llm_bundle.HF_FILES) if (path / n).is_file()]
    for name in copied:
        shutil.copyfile(path / name, tmp / name)
    if names.TOKENIZER_FILE not in copied:
        raise InputError(f"{path}: no {names.TOKENIZER_FILE}; a decoder .pte bundle ships the model's fast tokenizer")
    if names.TOKENIZER_CONFIG in copied:
        make_portable(tmp / names.TOKENIZER_CONFIG)
    return copied


def _manifest(job: ExportJob, config, order: list, defaults: dict, files: dict, check: dict) -> dict:
    """The decoder .pte manifest (docs/formats.md): user_inputs in the method's order, required on every call."""
    from importlib.metadata import version

    import torch

    coeffs = {k: list(defaults[k].shape) for k in order}
    eos = job.model_config.get("eos_token_id")
    return {
        "target": TARGET_EXECUTORCH, "fingerprint": job.subspace.fingerprint, "base_model": portable_model_id(job.path),
        "subspace_base_model": job.subspace.base_model, "task": names.TASK_CAUSAL_LM, "mode": names.MODE_SHARED,
        "user_inputs": [{**u, "default": False} for u in make_user_inputs((k, coeffs[k], "float32") for k in order)],
        "inputs": [{"name": names.INPUT_IDS, "dtype": "int64", "shape": [1, "sequence"]},
                   {"name": CACHE_POSITION, "dtype": "int64", "shape": ["sequence"]},
                   *({"name": k, "dtype": "float32", "shape": coeffs[k]} for k in order)],
        "outputs": [{"name": names.LOGITS, "dtype": "float32", "shape": [1, "sequence", int(config.vocab_size)]}],
        "coefficients": coeffs, "labels": None, "head": None, "eos_token_id": eos if eos is not None else [],
        "defaults": Path(job.coeffs_path).name if job.coeffs_path else "zeros",
        "method": {"name": "forward", "max_batch": 1, "max_cache_len": cache_len(job), "backend": "XnnpackBackend",
                   "precision": "fp32", "kv_cache": "static, inside the program"},
        "files": {"pte": files["pte"], "defaults": files["defaults"], "tokenizer": files["side"]},
        "verification": {"fp32": check}, "tolerance_rule": llm_bundle.LLM_TOLERANCE_RULE.replace("ONNX Runtime", "ExecuTorch"),
        "exporter": {"name": "torch.export (transformers' static-cache module)", "edge_lorax": __version__,
                     "torch": torch.__version__, "executorch": version("executorch")},
    }
