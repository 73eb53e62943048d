"""Does the decoder gradient graph need its fp32 base, or would int8 base weights do? (issue 28)

Takes a SmolLM2 bundle's model.grad.onnx, rounds every 2-D base weight (> 100k numbers: the projections and the tied
embedding / LM head) to int8 and back (symmetric, one scale per block of 32 inputs: MatMulNBits' int8 layout), and
compares loss and coefficient gradients with the fp32 graph on real batches (8 spam:sms prompts + answers, the
bundle's chat template; a projected user, so every gradient is non-zero). Reports per-batch loss difference, the
cosine and relative error of the concatenated gradient, and the sign agreement. Measures fidelity, not memory: the
fake-quantized graph still holds fp32 numbers (the memory an int8 graph would save is its weights' bytes, stated).

    .venv/bin/python benchmarks/personalize_llm/int8_base.py BUNDLE/model.grad.onnx SMOLLM2_DIR USER.npz LOCAL.csv \
        -o benchmarks/personalize_llm/int8_base.json
(SMOLLM2_DIR: a folder with the model's tokenizer files, e.g. the converted model in ~/.cache/edge-lorax/models.)
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
EOS = 2  # SmolLM2's <|im_end|> (the bundle manifest's eos_token_id)


def fake_int8(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per block of BLOCK along the last (input) axis, dequantized."""
    out, cols = w.shape
    blocks = w.reshape(out, cols // BLOCK, BLOCK)
    scale = np.abs(blocks).max(-1, keepdims=True) / 127.0
    q = np.clip(np.round(blocks / np.where(scale == 0, 1, scale)), -127, 127)
    return (q * scale).reshape(out, cols).astype(np.float32)


def quantized_copy(graph: Path, folder: Path) -> tuple:
    """(path of the fake-int8 graph, bytes of the weights rounded)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    rounded = 0
    for init in model.graph.initializer:
        if len(init.dims) == 2 and init.dims[0] * init.dims[1] > 100_000 and init.dims[1] % BLOCK == 0:
            init.CopyFrom(numpy_helper.from_array(fake_int8(numpy_helper.to_array(init)), init.name))
            rounded += init.dims[0] * init.dims[1] * 4
    onnx.save_model(model, str(folder / "model.grad.onnx"), save_as_external_data=True, location="w.data")
    return folder / "model.grad.onnx", rounded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("graph", type=Path)
    ap.add_argument("tokenizer_dir", type=Path)
    ap.add_argument("user", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=3)
    a = ap.parse_args()
    from edge_lorax.formats.user import read_user

    eos = pad = EOS
    data = read_local_data(a.data, a.tokenizer_dir, eos, 96, 8192)
    coeffs = read_user(a.user).inputs()
    fp32 = pl._session(a.graph, 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, rounded = quantized_copy(a.graph, Path(tmp))
        int8 = pl._session(path, 1)
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
