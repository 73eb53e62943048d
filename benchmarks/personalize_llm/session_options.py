"""Why runtime.personalize_llm.gradient_session turns ONNX Runtime's constant folding, prepacking and arena off:
peak memory (VmHWM) and seconds per step of the SmolLM2 gradient graph under each set of session options.

Each variant runs in its own process: load the bench's int8 bundle's model.grad.onnx (fp32 base weights), then 2
gradient steps of batch 8 (micro-batch 1, the first 8 rows of the cached spam:sms local file, <= 96 tokens, the
base-model start), 1 thread. Needs the cache that run.py builds (~/.cache/edge-lorax/bench-personalize-llm).

    .venv/bin/python benchmarks/personalize_llm/session_options.py   # -> session_options.json
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
CACHE = Path.home() / ".cache" / "edge-lorax" / "bench-personalize-llm"
VARIANTS = {"ORT defaults": [], "no prepacking": ["noprepack"], "no constant folding": ["nocf"],
            "no constant folding, no prepacking": ["nocf", "noprepack"],
            "gradient_session (no constant folding, no prepacking, no arena)": ["lean"],
            "all graph optimisations off": ["noopt"]}


def _status() -> dict:
    keys = ("VmHWM", "RssAnon", "RssFile")
    rows = [x.split() for x in open("/proc/self/status") if x.startswith(keys)]
    return {r[0].rstrip(":"): round(int(r[1]) / 1024, 1) for r in rows}


def _session(path: Path, opts: list):
    import onnxruntime as ort

    from edge_lorax.runtime import personalize_llm as pl

    if opts == ["lean"]:
        return pl.gradient_session(path, 1)
    o = pl._options(1)
    if "noprepack" in opts:
        o.add_session_config_entry("session.disable_prepacking", "1")
    if "noopt" in opts:
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    kw = {"disabled_optimizers": ["ConstantFolding"]} if "nocf" in opts else {}
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"], **kw)


def probe(opts: list) -> dict:
    """One variant, in this process: memory after load and after 2 steps, seconds per step, the loss."""
    import time

    import numpy as np

    from edge_lorax.formats.bundle import bundle_file
    from edge_lorax.runtime import personalize_llm as pl
    from edge_lorax.runtime.local_data import read_local_data

    bundle = CACHE / "bundle"
    manifest = pl.decoder_manifest(bundle)
    eos, pad = pl._token_ids(manifest)
    rows = read_local_data(CACHE / "spam" / "local-256-0.csv", bundle, eos, 96, 2048).examples[:8]
    start = pl.start_user(bundle, manifest, None, np.random.default_rng(0))
    session = _session(bundle_file(bundle, manifest["files"]["gradient"]), opts)
    loaded = _status()
    t = time.perf_counter()
    for _ in range(2):
        loss, _ = pl.gradients(session, rows, start, pad, 1)
    return {"after_load_mib": loaded, "after_2_steps_mib": _status(),
            "s_per_step": round((time.perf_counter() - t) / 2, 2), "loss": round(loss, 6)}


def main():
    if len(sys.argv) > 1:  # a child: one variant
        print(json.dumps(probe(sys.argv[1:] if sys.argv[1] != "-" else [])))
        return
    from edge_lorax.bench.measure import finish, portable, stamp

    out = {"stamp": stamp(".venv/bin/python benchmarks/personalize_llm/session_options.py"), "variants": {}}
    for name, opts in VARIANTS.items():
        done = subprocess.run([sys.executable, __file__, *(opts or ["-"])], capture_output=True, text=True, check=True)
        out["variants"][name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, out["variants"][name], file=sys.stderr, flush=True)
    out["stamp"] = finish(out["stamp"])
    (HERE / "session_options.json").write_text(portable(json.dumps(out, indent=1)) + "\n")


if __name__ == "__main__":
    main()
