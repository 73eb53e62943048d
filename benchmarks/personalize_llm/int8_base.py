"""Does the decoder gradient graph need its fp32 base, or would int8 base weights do? (issue 28)

Takes a SmolLM2 bundle's model.grad.onnx, rounds every 2-D base weight (> 100k numbers: the projections and the tied
embedding / LM head) to int8 and back (symmetric, one scale per block of 32 inputs: MatMulNBits' int8 layout), and
compares loss and coefficient gradients with the fp32 graph on real batches (8 spam:sms prompts + answers, the
bundle's chat template; a projected user, so every gradient is non-zero). Reports per-batch loss difference, the
cosine and relative error of the concatenated gradient, and the sign agreement. Measures fidelity, not memory: the
fake-quantized graph still holds fp32 numbers (the memory an int8 graph would save is its weights' bytes, stated).

    .venv/bin/python benchmarks/personalize_llm/int8_base.py BUNDLE USER.npz LOCAL.csv -o int8_base.json
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_lorax.runtime import personalize_llm as pl  # noqa: E402
from edge_lorax.runtime.local_data import read_local_data  # noqa: E402

BLOCK = 32


def fake_int8(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per block of BLOCK along the last (input) axis, dequantized."""
    out, cols = w.shape
    blocks = w.reshape(out, cols // BLOCK, BLOCK)
    scale = np.abs(blocks).max(-1, keepdims=True) / 127.0
    q = np.clip(np.round(blocks / np.where(scale == 0, 1, scale)), -127, 127)
    return (q * scale).reshape(out, cols).astype(np.float32)


def quantized_copy(bundle: Path, folder: Path) -> tuple:
    """(path of the fake-int8 graph, bytes of the weights rounded)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "model.grad.onnx"))
    rounded = 0
    for init in model.graph.initializer:
        if len(init.dims) == 2 and init.dims[0] * init.dims[1] > 100_000 and init.dims[1] % BLOCK == 0:
            init.CopyFrom(numpy_helper.from_array(fake_int8(numpy_helper.to_array(init)), init.name))
            rounded += init.dims[0] * init.dims[1] * 4
    onnx.save_model(model, str(folder / "model.grad.onnx"), save_as_external_data=True, location="w.data")
    return folder / "model.grad.onnx", rounded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("user", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=3)
    a = ap.parse_args()
    manifest = pl.decoder_manifest(a.bundle)
    eos, pad = pl._token_ids(manifest)
    data = read_local_data(a.data, a.bundle, eos, 96, manifest["kv"]["context_length"])
    coeffs = pl.start_user(a.bundle, manifest, a.user, np.random.default_rng(0))
    fp32 = pl._session(a.bundle / "model.grad.onnx", 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, rounded = quantized_copy(a.bundle, Path(tmp))
        int8 = pl._session(path, 2)
        for b in range(a.batches):
            batch = list(data.examples[8 * b:8 * b + 8])
            (l32, g32), (l8, g8) = (pl.gradients(s, batch, coeffs, pad, 8) for s in (fp32, int8))
            x, y = (np.concatenate([g[k].ravel() for k in sorted(g)]) for g in (g32, g8))
            rows.append({"loss_fp32": round(l32, 5), "loss_int8": round(l8, 5),
                         "grad_cosine": round(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)), 5),
                         "grad_rel_error": round(float(np.linalg.norm(x - y) / np.linalg.norm(x)), 5),
                         "sign_agreement": round(float(np.mean(np.sign(x) == np.sign(y))), 4)})
            print(rows[-1], flush=True)
    out = {"weights_rounded_mib": round(rounded / 2**20, 1), "int8_bytes_mib": round(rounded / 4 / 2**20, 1),
           "block": BLOCK, "batches": rows}
    a.output.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
