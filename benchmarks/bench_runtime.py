"""The committed runtime benchmark on the real MiniLM: source adapters -> subspace -> one projected user (+ its task
head) -> exported bundle (fp32 + int8 + fused) -> `edge-lorax bench` report, with optimum's plain export and its O2
rows when the optimum environment exists (scripts/setup-optimum.sh).

    .venv/bin/python benchmarks/bench_runtime.py -o benchmarks/reports/runtime-minilm          # the report (quiet machine)
    .venv/bin/python benchmarks/bench_runtime.py -o /tmp/r --quick --random-adapters 6       # smoke test, no committed adapters

Adapters default to the committed `adapters/*/` (benchmarks/train_sources.py); the first one is the bench user.
The work folder (subspace, bundle) defaults to out/bench-runtime and is reused when its inputs match.
Run it only on an idle machine (1-min load < 0.5): the report records the load average and warns otherwise.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
OPTIMUM_CLI = ROOT / ".venv-optimum" / "bin" / "optimum-cli"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge_lorax.formats import names  # noqa: E402


def random_adapters(out: Path, n: int, rank: int = 8) -> list:
    """n seeded random PEFT LoRA adapters (q, v, r=8, classifier head) on the MiniLM: plumbing, not accuracy."""
    import torch
    from peft import LoraConfig, get_peft_model

    from edge_lorax.builder.models import load_model, resolve_model

    dirs = []
    for i in range(n):
        torch.manual_seed(100 + i)
        model = load_model(resolve_model("default"), num_labels=2)
        peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["query", "value"],
                                                init_lora_weights=False, modules_to_save=["classifier"]))
        peft.save_pretrained(out / f"random{i}")
        dirs.append(out / f"random{i}")
    return dirs


def build_inputs(adapters: list, work: Path, k: int) -> tuple:
    """(subspace dir, user.npz, bundle dir) under work; the user is adapter 0 projected, with its head."""
    from edge_lorax.builder.project import project_adapter
    from edge_lorax.builder.subspace import build_subspace
    from edge_lorax.export import ExportConfig, export_bundle
    from edge_lorax.formats.subspace import read_subspace, write_subspace
    from edge_lorax.formats.user import User, write_user

    subspace = write_subspace(build_subspace(adapters, components=k), work / "subspace", overwrite=True)
    proj = project_adapter(read_subspace(subspace), adapters[0]).coeffs  # carries the adapter's saved head
    rng = np.random.default_rng(0)
    head = proj.head or {names.HEAD_WEIGHT_T: (rng.standard_normal((384, 2)) * 0.05).astype(np.float32),
                         names.HEAD_BIAS: np.zeros(2, np.float32)}
    user = write_user(User(proj.fingerprint, proj.coefficients, head, proj.meta), work / "user.npz")
    bundle = export_bundle("default", subspace, work / "bundle", user, ExportConfig(quantize="int8", overwrite=True, fused=True))
    return subspace, user, Path(bundle)


def main(argv=None):
    """Parse arguments, build (or rebuild) the inputs, run the bench, print the report path."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True, help="report folder")
    ap.add_argument("--adapters", nargs="*", help="PEFT LoRA folders [default: adapters/*/]")
    ap.add_argument("--random-adapters", type=int, default=0, help="use N seeded random adapters instead")
    ap.add_argument("--k", type=int, default=8, help="components per module (K)")
    ap.add_argument("--work", default=str(ROOT / "out" / "bench-runtime"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--optimum-cli", default=str(OPTIMUM_CLI) if OPTIMUM_CLI.is_file() else None,
                    help="optimum's CLI for the optimum plain / O2 rows [default: .venv-optimum's, made by "
                         "scripts/setup-optimum.sh]")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    adapters = (random_adapters(work / "random-adapters", args.random_adapters) if args.random_adapters
                else args.adapters or sorted(str(p.parent) for p in (ROOT / "adapters").glob(f"*/{names.ADAPTER_CONFIG}")))
    if len(adapters) < 2:
        sys.exit("need at least 2 source adapters: train them with benchmarks/train_sources.py or pass --random-adapters N")
    subspace, user, bundle = build_inputs([Path(a) for a in adapters], work, args.k)
    from edge_lorax.bench.run import run_bench

    command = shlex.join([".venv/bin/python", "benchmarks/bench_runtime.py", *(argv or sys.argv[1:])])
    out = run_bench(bundle, args.output, args.quick, None, subspace, user, command,
                    log=lambda m: print(m, file=sys.stderr), optimum_cli=args.optimum_cli)
    print(out / "report.md")


if __name__ == "__main__":
    main()
