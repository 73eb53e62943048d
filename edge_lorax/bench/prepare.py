"""Bench preparation: every graph and user file a benchmark run compares, written into a work folder.

From a bundle (the swappable EigenLoRAx graph) plus its base model and subspace: the plain base model, the int8
variants, the merged export, the multi-LoRA anchor (the same user's full A and B as inputs), the bundle's fused graph
when it ships one (`export --fuse`), optimum's own export of the plain model and the same after ORTOptimizer O2 (the
graphs a Hugging Face user would pick instead; only where an `optimum-cli` is found), N user files (npz and
.onnx_adapter) and a parity check across all of them. Needs torch/transformers/onnx, imported inside functions so
the runtime package still imports without them. Does not time anything.
"""

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_lorax.bench.workers import load_feeds, open_session, runner, token_inputs, torch_model
from edge_lorax.export import reference as graphs
from edge_lorax.formats import names
from edge_lorax.formats.bundle import read_manifest
from edge_lorax.formats.errors import InputError, MissingInputError
from edge_lorax.formats.onnx_adapter import write_onnx_adapter
from edge_lorax.formats.synthetic import random_user as synthetic_user
from edge_lorax.formats.user import User, read_user, write_user
from edge_lorax.runtime.bundle import open_bundle
from edge_lorax.runtime.users import make_user

EIGEN, ANCHOR, PLAIN, MERGED = "eigenlorax", "multi-lora anchor", "plain", "merged"
INT8 = " int8"
AA_COPY = PLAIN + " (A/A copy)"  # the paired control: plain's file opened a second time (same graph, its own session)
FUSED = EIGEN + " fused"  # the bundle's model.fused.onnx (export/fuse.py), when it has one
OPTIMUM, OPTIMUM_O2 = PLAIN + " (optimum)", PLAIN + " (optimum O2)"  # `optimum-cli export onnx`, then `-O2`
OPTIMUM_TASKS = {names.TASK_CLASSIFICATION: "text-classification", names.TASK_FEATURES: "feature-extraction"}


@dataclass(frozen=True)
class Prepared:
    """Paths of everything the workers load; `models`/`feeds` keyed by label (feeds None: no per-user inputs)."""

    models: dict
    feeds: dict
    user_files: list
    eigen_adapters: list
    lora_adapters: list
    merged_model: str
    vocab: int
    num_labels: int
    model_dir: str
    subspace: str
    coeffs: str
    user_bytes: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _num_labels_of(bundle_dir: Path) -> int:
    """Labels of the bundle's task head (0: a features model without head)."""
    manifest = read_manifest(bundle_dir)
    if manifest.get("task") not in (names.TASK_CLASSIFICATION, names.TASK_REGRESSION):
        return 0
    return int(manifest.get("labels") or 2)


def random_user(bundle, seed: int, scale: float = 0.5) -> User:
    """A user of the bundle's shapes (seeded): latency does not depend on the values, parity checks use them."""
    shapes = {k: s.shape for k, s in bundle.coeff_inputs.items()}
    return synthetic_user(shapes, bundle.fingerprint, seed, scale=scale, meta={"name": f"bench-user-{seed}"})


def _factors_of(subspace_dir, coeffs: User) -> dict:
    """{module: (lora_A (r, in), lora_B (out, r))}: the user's full LoRA, the same ΔW as its coefficients."""
    from edge_lorax.builder.project import lora_factors
    from edge_lorax.formats.subspace import read_subspace

    return lora_factors(read_subspace(subspace_dir), coeffs)


def _save_feeds(feeds: dict, path: Path) -> str:
    np.savez(path, **feeds)
    return str(path)


def _export_merged(bundle_dir: Path, model_dir, subspace_dir, coeffs_path, out: Path) -> Path:
    """The exporter's --merge bundle for the bench user (ΔW folded into the weights, verified against torch)."""
    from edge_lorax.export import ExportConfig, export_bundle

    manifest = read_manifest(bundle_dir)
    config = ExportConfig(task=manifest.get("task"), merge=True, num_labels=manifest.get("labels"),
                          allow_base_mismatch=True)
    dest = export_bundle(model_dir, subspace_dir, out / "merged-bundle", coeffs_path, config)
    return Path(dest) / names.BUNDLE_MODEL


def find_optimum_cli(given=None) -> str | None:
    """optimum's CLI: `given`, else $EDGE_LORAX_OPTIMUM_CLI, else beside this interpreter, else on PATH; None when
    there is none (the project's is `.venv-optimum/bin/optimum-cli`, made by scripts/setup-optimum.sh)."""
    for cand in (given, os.environ.get("EDGE_LORAX_OPTIMUM_CLI"), Path(sys.executable).parent / "optimum-cli"):
        if cand and Path(cand).is_file():
            return str(cand)
    return shutil.which("optimum-cli")


def _run_cli(cmd: list, timeout_s: int = 900):
    """Run one optimum-cli command offline; its last stderr line in the error when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`{' '.join(map(str, cmd[:3]))}` exit {proc.returncode}: {tail[0][:300]}")


def optimum_plain(cli: str, model_dir, task: str, out: Path) -> dict:
    """{OPTIMUM: model.onnx, OPTIMUM_O2: model_optimized.onnx}: optimum's export of the plain base model
    (`optimum-cli export onnx --task text-classification|feature-extraction`; its own head, random where the checkpoint
    has none: timing only) and the same after ORTOptimizer at level 2 (`optimum-cli onnxruntime optimize -O2`: ORT's
    BERT fusions). Raises RuntimeError (the CLI's last line) or KeyError (a task optimum has no row for here)."""
    plain, o2 = out / "optimum", out / "optimum-O2"
    _run_cli([cli, "export", "onnx", "--model", model_dir, "--task", OPTIMUM_TASKS[task], "--library-name",
              "transformers", plain])
    _run_cli([cli, "onnxruntime", "optimize", "--onnx_model", plain, "-o", o2, "-O2"])
    return {OPTIMUM: plain / "model.onnx", OPTIMUM_O2: o2 / "model_optimized.onnx"}


def _extra_models(bundle_dir: Path, model_dir, task: str, cli: str | None, work: Path, notes: list) -> dict:
    """The optional rows: the bundle's fused graph, optimum's plain export and its O2; each absent one is a note."""
    models = {}
    fused = bundle_dir / names.BUNDLE_MODEL_FUSED
    if fused.is_file():
        models[FUSED] = fused
    else:
        notes.append(f"no {FUSED} row: the bundle has no {names.BUNDLE_MODEL_FUSED} (export it with --fuse)")
    if cli is None:
        notes.append("no optimum rows: no optimum-cli found; install the [optimum] extra (scripts/setup-optimum.sh) "
                     "and pass --optimum-cli .venv-optimum/bin/optimum-cli")
        return models
    try:
        models.update(optimum_plain(cli, model_dir, task, work))
    except (RuntimeError, KeyError, subprocess.TimeoutExpired) as e:
        notes.append(f"no optimum rows: {e}")
    return models


def _int8_of(src: Path, dst: Path, shipped: Path | None = None) -> Path:
    """The bundle's own int8 model when shipped, else the exporter's quantization (the same for plain, EigenLoRAx
    and anchor: base weights int8 per channel, every node on a per-user input's low-rank path kept fp32)."""
    if shipped is not None and shipped.is_file():
        return shipped
    return graphs.quantized(src, dst)


def _user_files(bundle, base: User, subspace_dir, out: Path, n: int) -> tuple:
    """n users (the bench user first, then seeded random ones): npz files and .onnx_adapter files for both graphs."""
    users = [base] + [random_user(bundle, 100 + i) for i in range(n - 1)]
    npz, eigen_ad, lora_ad = [], [], []
    for i, user in enumerate(users):
        npz.append(str(write_user(user, out / f"user{i}.npz")))
        eigen_ad.append(str(write_onnx_adapter(user.inputs(), out / f"user{i}.eigen{names.ADAPTER_SUFFIX}", user.fingerprint)))
        lora = {**graphs.lora_feeds(_factors_of(subspace_dir, user)), **user.head}
        lora_ad.append(str(write_onnx_adapter(lora, out / f"user{i}.lora{names.ADAPTER_SUFFIX}")))
    return npz, eigen_ad, lora_ad


def user_bytes(coeffs: User, lora: dict, factors: dict, files: dict) -> dict:
    """Per-user sizes: tensors in memory (with and without the task head), the same user's LoRA at its rank and at
    r=8 (the issue's yardstick), and the files on disk (`files`: name -> path)."""
    head = sum(v.nbytes for v in coeffs.head.values())
    lora_tensors = sum(v.nbytes for k, v in lora.items() if not k.startswith(names.HEAD_PREFIX))
    lora_r8 = sum(8 * (a.shape[1] + b.shape[0]) * 4 for a, b in factors.values())  # A (8, in) + B (out, 8), float32
    ks = sorted({a.shape[1] for a in coeffs.coefficients.values()} | {a.shape[0] for a in coeffs.coefficients.values()})
    return {"eigen_tensors": coeffs.nbytes() - head, "eigen_with_head": coeffs.nbytes(), "head": head,
            "lora_tensors": lora_tensors, "lora_with_head": lora_tensors + head, "lora_r8_tensors": lora_r8,
            "lora_r8_with_head": lora_r8 + head, "coeff_dims": ks, "modules": len(factors),
            "module_shapes": sorted({(b.shape[0], a.shape[1]) for a, b in factors.values()}),
            **{k: Path(v).stat().st_size for k, v in files.items()}}


def parity(models: dict, feeds: dict, reference: np.ndarray, tokens: dict) -> dict:
    """Max abs diff of each graph's logits vs the torch reference on the same tokens (int8: expected larger)."""
    out = {}
    for label, path in models.items():
        run = runner(open_session(path, 1), load_feeds(feeds.get(label)), tokens)
        out[label] = float(np.abs(run()[0] - reference).max())
    return out


def _reference(model_dir, subspace_dir, coeffs_path, num_labels: int, tokens: dict) -> np.ndarray:
    import torch

    model = torch_model(model_dir, subspace_dir, coeffs_path, num_labels)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in tokens.items()})
    if hasattr(out, "logits"):
        return out.logits.numpy()
    from edge_lorax.export.graph import mean_pool  # features bundles output the masked mean

    return mean_pool(out.last_hidden_state, torch.from_numpy(tokens[names.ATTENTION_MASK])).numpy()


def _resolve_inputs(bundle_dir: Path, model_dir, subspace_dir) -> tuple:
    """Base model folder and subspace folder: given, else from the manifest (base_model id, subspace path)."""
    from edge_lorax.builder.models import resolve_model

    manifest = read_manifest(bundle_dir)
    model_dir = resolve_model(model_dir or manifest.get("base_model") or "default")
    subspace_dir = subspace_dir or manifest.get("subspace_path") or manifest.get("subspace")
    if not subspace_dir or not Path(subspace_dir).is_dir():
        raise MissingInputError(f"{bundle_dir}: the bench needs the bundle's subspace folder for the anchor graph and "
                                "the torch reference; pass --subspace DIR")
    return Path(model_dir), Path(subspace_dir)


def _check_inputs(bundle, subspace_dir, coeffs: User, coeffs_path):
    """The subspace folder and the user belong to the bundle (the user validated as runtime.make_user validates a
    file: fingerprint, shapes, head width), each refusal naming its file."""
    from edge_lorax.formats.subspace import read_subspace

    fp = read_subspace(subspace_dir).fingerprint
    if fp != bundle.fingerprint:
        raise InputError(f"{subspace_dir}: subspace {fp}, but {bundle.path} serves {bundle.fingerprint}; pass the "
                         "subspace the bundle was exported from (--subspace)")
    if coeffs_path:
        make_user(bundle, coeffs.inputs(), fingerprint=coeffs.fingerprint, path=coeffs_path)


def prepare(bundle_dir, work, model_dir=None, subspace_dir=None, coeffs_path=None, n_users: int = 10,
            optimum_cli: str | None = None) -> Prepared:
    """Write every compared graph and user file into `work`; returns their paths and a parity table vs torch (not
    for the plain rows, whose heads are not the user's). optimum_cli: see find_optimum_cli."""
    from edge_lorax.builder.models import load_model

    bundle_dir, work = Path(bundle_dir), Path(work)
    model_dir, subspace_dir = _resolve_inputs(bundle_dir, model_dir, subspace_dir)
    (work / "users").mkdir(parents=True, exist_ok=True)
    bundle, notes, labels = open_bundle(bundle_dir), [], _num_labels_of(bundle_dir)
    coeffs = read_user(coeffs_path) if coeffs_path else random_user(bundle, 0)
    _check_inputs(bundle, subspace_dir, coeffs, coeffs_path)
    coeffs_path = write_user(coeffs, work / "users" / "bench-user.npz")
    factors = _factors_of(subspace_dir, coeffs)
    npz, eigen_ad, lora_ad = _user_files(bundle, coeffs, subspace_dir, work / "users", n_users)
    task = read_manifest(bundle_dir).get("task") or names.TASK_CLASSIFICATION
    anchor = graphs.export_anchor(load_model(model_dir, labels), task, factors, coeffs.head, work / "anchor.onnx")
    models = {PLAIN: graphs.export_plain(load_model(model_dir, labels), task, work / "plain.onnx"), EIGEN: bundle.model_path,
              ANCHOR: anchor, MERGED: _export_merged(bundle_dir, model_dir, subspace_dir, coeffs_path, work)}
    models.update(_extra_models(bundle_dir, model_dir, task, find_optimum_cli(optimum_cli), work, notes))
    for label in (PLAIN, EIGEN, ANCHOR):
        models[label + INT8] = _int8_of(models[label], work / f"{label.replace(' ', '-')}.int8.onnx",
                                       bundle_dir / names.BUNDLE_MODEL_INT8 if label == EIGEN else None)
    lora = {**graphs.lora_feeds(factors), **coeffs.head}
    feeds = {EIGEN: _save_feeds(coeffs.inputs(), work / "eigen-feeds.npz"), ANCHOR: _save_feeds(lora, work / "lora-feeds.npz")}
    feeds.update({k + INT8: feeds[k] for k in (EIGEN, ANCHOR)} | ({FUSED: feeds[EIGEN]} if FUSED in models else {}))
    vocab = int(bundle.model_config.get("vocab_size", 1000))
    tokens = token_inputs(2, 16, vocab)
    ref = _reference(model_dir, subspace_dir, coeffs_path, labels, tokens)
    return Prepared({k: str(v) for k, v in models.items()}, feeds, npz, eigen_ad, lora_ad, str(models[MERGED]), vocab,
                    labels, str(model_dir), str(subspace_dir), str(coeffs_path),
                    user_bytes(coeffs, lora, factors, {"eigen_npz_file": npz[0], "eigen_adapter_file": eigen_ad[0],
                                                     "lora_adapter_file": lora_ad[0]}),
                    parity({k: v for k, v in models.items() if not k.startswith(PLAIN)}, feeds, ref, tokens), notes)
