"""One SPSA step's forwards, two ways (issue 14's "many perturbations in one batched run"): the per-example graph
with 2·B rows in one run (row i: its own perturbed user) against the shared graph run twice on B rows (θ + εΔ, then
θ − εΔ) — what `personalize` does. MiniLM, the nyt bundle of run.py, 1 thread, max length 48, medians of 30 steps.

    .venv/bin/python benchmarks/personalize/per_example.py      # after run.py has built the nyt bundle
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edge_lorax.bench.measure import finish, portable, stamp, stamp_md  # noqa: E402

CACHE = Path.home() / ".cache" / "edge-lorax" / "bench-personalize" / "nyt"


def main(batch: int = 16, steps: int = 30):
    from edge_lorax.export import ExportConfig, export_bundle
    from edge_lorax.runtime import open_bundle
    from edge_lorax.runtime.bundle import SessionConfig
    from edge_lorax.runtime.infer import encode, run_arrays, run_mixed
    from edge_lorax.runtime.users import make_user

    st = stamp(portable(".venv/bin/python benchmarks/personalize/per_example.py"))
    pe_dir = CACHE / "bundle-per-example"
    if not (pe_dir / "manifest.json").is_file():
        export_bundle(None, CACHE / "subspace", pe_dir,
                      config=ExportConfig(task="classification", num_labels=2, per_example=True, overwrite=True))
    shared, pe = open_bundle(CACHE / "bundle", SessionConfig(threads=1)), open_bundle(pe_dir, SessionConfig(threads=1))
    texts = [r.split(",", 1)[0] for r in (CACHE / "local-256-0.csv").read_text().splitlines()[1:batch + 1]]
    tokens = encode(shared, texts, 48)
    rng = np.random.default_rng(0)
    shapes = {k: s.shape for k, s in shared.coeff_inputs.items() if not k.startswith("head.")}
    users = [make_user(shared, {k: rng.standard_normal(v).astype(np.float32) * 0.1 for k, v in shapes.items()})
             for _ in range(2)]
    pe_users = [make_user(pe, u.arrays) for u in users]
    both = {k: np.concatenate([v, v]) for k, v in tokens.items()}
    times = {"shared, 2 runs of B rows": [], "per-example, 1 run of 2B rows": []}
    for _ in range(steps):
        t = time.perf_counter()
        for u in users:
            run_arrays(shared, u, tokens, ["head_input"])
        times["shared, 2 runs of B rows"].append(1e3 * (time.perf_counter() - t))
        t = time.perf_counter()
        run_mixed(pe, [pe_users[0]] * batch + [pe_users[1]] * batch, both, ["head_input"])
        times["per-example, 1 run of 2B rows"].append(1e3 * (time.perf_counter() - t))
    st = finish(st)
    med = {k: round(float(np.median(v)), 1) for k, v in times.items()}
    md = ["# One SPSA step's forwards: shared graph ×2 vs per-example graph ×1", ""] + stamp_md(st) + [
        "", f"B = {batch} examples of the nyt local set, max length 48, 1 thread, median of {steps} steps (ms):", ""]
    md += [f"- {k}: {v} ms" for k, v in med.items()]
    (HERE / "per_example.md").write_text("\n".join(md) + "\n")
    (HERE / "per_example.json").write_text(json.dumps({"ms": med, "stamp": st}, indent=1, sort_keys=True) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
