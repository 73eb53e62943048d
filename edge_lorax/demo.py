"""The main job on the embedded defaults: committed source adapters -> subspace -> two users -> bundle -> device.

Builds a subspace from the tweets, movies and Amazon source adapters (`adapters/`), makes two NYT users (one by
training-free projection of the NYT LoRA, one trained briefly on NYT sentences), exports one bundle, swaps the
two users on one ONNX Runtime session (numpy + onnxruntime only), prints their predictions and writes a quick
bench report. A few minutes on 2 cores. Does not retrain the source adapters (benchmarks/train_sources.py does).
"""

import sys
import time
from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.errors import MissingInputError

CHECKOUT_ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"  # present in a source checkout, not in a wheel
SOURCES = [f"{d}-{t}" for d in ("tweets", "movies", "amazon") for t in ("binary", "3class", "regression")]
SENTENCES = ("The editorial makes a thoughtful, persuasive case.", "This policy is a reckless and cruel failure.",
             "The senator's speech was neither good nor bad.", "What a wonderful surprise!")


def log(msg: str):
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _build_users(adapters: Path, out: Path, steps: int) -> tuple:
    """Subspace + two coefficient files: nyt-projected (no training), nyt-trained (coefficients + head)."""
    from edge_lorax.builder.data import load_task
    from edge_lorax.builder.loop import TrainConfig
    from edge_lorax.builder.project import project_adapter, project_sources
    from edge_lorax.builder.subspace import build_subspace
    from edge_lorax.builder.train import train_coeffs
    from edge_lorax.formats.subspace import write_subspace
    from edge_lorax.formats.user import write_user

    sub = build_subspace([adapters / s for s in SOURCES], components=8, mean="keep")
    write_subspace(sub, out / "subspace", overwrite=True, sources=project_sources(sub, [adapters / s for s in SOURCES]))
    proj = project_adapter(sub, adapters / "nyt-binary")
    write_user(proj.coeffs, out / "nyt-projected.npz")
    log(f"subspace {sub.fingerprint}: 9 sources, K=8; nyt-binary projected, relative ΔW error {proj.overall:.3f}")
    config = TrainConfig(lr=2e-2, batch_size=16, max_length=48, steps=steps, eval_every=0)
    report = train_coeffs(sub, load_task("vader:nyt-binary"), out / "nyt-trained.npz", config=config)
    log(report.summary())
    return out / "subspace", out / "nyt-projected.npz", out / "nyt-trained.npz"


def _swap_users(bundle_dir: Path, users: list) -> dict:
    """Load the bundle once, preload both users, alternate them on one session; {user: predictions}."""
    from edge_lorax.runtime.bundle import open_bundle
    from edge_lorax.runtime.infer import predict
    from edge_lorax.runtime.users import load_user

    bundle = open_bundle(bundle_dir, "default")
    loaded = {Path(u).stem: load_user(bundle, u) for u in users}
    return {name: predict(bundle, user, list(SENTENCES)) for name, user in loaded.items()}


def _source_adapters(adapters=None) -> Path:
    """The folder of the committed source adapters: the given one, else the source checkout's `adapters/`; every
    adapter the demo needs must be there (an installed wheel has no checkout: pass --adapters)."""
    folder = Path(adapters) if adapters else CHECKOUT_ADAPTERS
    missing = [s for s in (*SOURCES, "nyt-binary") if not (folder / s / names.ADAPTER_CONFIG).is_file()]
    if missing:
        raise MissingInputError(f"{folder}: no source adapter {missing[0]} ({len(missing)} missing); pass --adapters with the "
                                "`adapters/` folder of an edge-lorax checkout")
    return folder


def run_demo(out, steps: int = 60, bench: bool = True, adapters=None) -> dict:
    """The whole job; returns {user: predictions}. Outputs under `out` (subspace, users, bundle, bench/)."""
    from edge_lorax.export import ExportConfig, export_bundle

    out, start, folder = Path(out), time.perf_counter(), _source_adapters(adapters)
    out.mkdir(parents=True, exist_ok=True)
    subspace, projected, trained = _build_users(folder, out, steps)
    log("exporting the bundle (fp32 + int8, verified against torch)")
    config = ExportConfig(quantize="int8", overwrite=True, gradient=True)  # gradient: personalize trains with it
    bundle = export_bundle(None, subspace, out / "bundle", projected, config)
    results = _swap_users(bundle, [projected, trained])
    if bench:
        from edge_lorax.bench.run import run_bench

        log("quick bench")
        run_bench(bundle, out / "bench", quick=True, subspace_dir=subspace, coeffs=projected,
                  command=f"edge-lorax demo -o {out}")
    log(f"done in {time.perf_counter() - start:.0f} s")
    return results
