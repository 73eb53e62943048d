"""The runtime without torch (subprocess with torch & co. blocked) and the `edge-lorax run` command's output."""

import json
import subprocess
import sys

import numpy as np
from click.testing import CliRunner

from edge_lorax.cli import cli
from edge_lorax.formats import names
from edge_lorax.runtime import encode, load_user, open_bundle, predict
from helpers.runtime import TEXTS, random_user, torch_logits

BLOCKED = ("torch", "transformers", "peft", "onnx", "onnxscript", "safetensors", "matplotlib", "psutil", "tqdm")
RUNTIME_MODULES = ("bundle", "users", "infer")


def _blocked_python(body: str) -> subprocess.CompletedProcess:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)
    return subprocess.run([sys.executable, "-c", prelude + body], capture_output=True, text=True, timeout=120)


def test_runtime_imports_and_serves_without_torch(setup):
    body = f"""
import importlib, json
for m in {RUNTIME_MODULES!r}:
    importlib.import_module("edge_lorax.runtime." + m)
from edge_lorax.runtime import load_user, open_bundle, predict
b = open_bundle({str(setup.bundle)!r})
preds = predict(b, load_user(b, {str(setup.users[1])!r}), {TEXTS!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} and sys.modules[m] is not None)
print(json.dumps({{"labels": [p.label for p in preds], "scores": [p.score for p in preds], "loaded": loaded}}))
"""
    proc = _blocked_python(body)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    bundle = open_bundle(setup.bundle)
    want = predict(bundle, load_user(bundle, setup.users[1]), TEXTS)
    assert out["labels"] == [p.label for p in want]
    np.testing.assert_allclose(out["scores"], [p.score for p in want], rtol=1e-6)


def test_cli_run_without_torch(setup):
    body = f"""
from edge_lorax.cli import main
sys.argv = ["edge-lorax", "run", {str(setup.bundle)!r}, "--coeffs", {str(setup.users[2])!r}, "--json", "good fun"]
main()
"""
    proc = _blocked_python(body)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["predictions"][0]["text"] == "good fun"


def test_run_json_output(setup):
    res = CliRunner().invoke(cli, ["run", str(setup.bundle), "--coeffs", str(setup.users[1]), "--json", *TEXTS])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["coeffs"] == str(setup.users[1]) and out["profile"] == "default" and out["model"] == names.BUNDLE_MODEL
    assert res.stderr == ""  # JSON says which file ran in "model"; text mode says it on stderr
    bundle = open_bundle(setup.bundle)
    logits = torch_logits(setup.model, setup.subspace, random_user(setup.subspace, 1), encode(bundle, TEXTS))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert [p["text"] for p in out["predictions"]] == TEXTS
    assert [p["label"] for p in out["predictions"]] == [["negative", "positive"][i] for i in probs.argmax(-1)]
    for p, row in zip(out["predictions"], probs):
        assert set(p) == {"text", "label", "score", "scores"}
        np.testing.assert_allclose([p["scores"]["negative"], p["scores"]["positive"]], row, atol=1e-5)


def test_run_text_output_and_users_differ(setup):
    runner = CliRunner()
    outs = [runner.invoke(cli, ["run", str(setup.bundle), "--coeffs", str(u), *TEXTS]) for u in setup.users[:2]]
    assert all(o.exit_code == 0 for o in outs)
    lines = [o.stdout.strip().splitlines() for o in outs]
    assert [ln.split("\t")[2] for ln in lines[0]] == TEXTS
    assert lines[0] != lines[1]  # two users, two sets of predictions
    adapter = runner.invoke(cli, ["run", str(setup.bundle), "--coeffs", str(setup.bundle / f"user0{names.ADAPTER_SUFFIX}"), *TEXTS])
    assert adapter.stdout == outs[0].stdout  # the .onnx_adapter of user0 predicts exactly like user0.npz


def test_mobile_profile_says_which_model_ran(setup):
    """`run --profile mobile` on a bundle without int8 / .ort runs fp32 and says so on stderr (issue 26: it was silent)."""
    res = CliRunner().invoke(cli, ["run", str(setup.bundle), "--profile", "mobile", *TEXTS])
    assert res.exit_code == 0, res.output
    have = [v for v in ("int8_ort", "int8", "ort") if (setup.bundle / names.BUNDLE_VARIANT_FILES[v]).is_file()]
    want = names.BUNDLE_VARIANT_FILES[have[0]] if have else names.BUNDLE_MODEL
    assert res.stderr.startswith(f"model: {want} (profile mobile, variant mobile)")
