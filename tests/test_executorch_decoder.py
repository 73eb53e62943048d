"""The decoder ExecuTorch target (`edge-lorax export --model M --target executorch`) on the tiny Llama of
helpers.decoder: a .pte with a static KV cache inside and the coefficients as method inputs. Its prefill logits equal
torch's (<= 1e-5 relative), its greedy tokens equal torch's for two users swapped on one loaded program (no reload,
no cache reset), its user_inputs are the ONNX decoder bundle's in the same order, and what it does not offer is
refused before any work. Lowering takes ~20 s, so the tests that lower are marked slow.
"""

import numpy as np
import pytest

pytest.importorskip("executorch")
torch = pytest.importorskip("torch")

from edge_lorax.builder.inject import inject_subspace  # noqa: E402
from edge_lorax.builder.models import load_causal_lm  # noqa: E402
from edge_lorax.export import executorch_decoder  # noqa: E402
from edge_lorax.formats.bundle import read_manifest  # noqa: E402
from edge_lorax.formats.subspace import read_subspace  # noqa: E402
from edge_lorax.formats.user import read_user  # noqa: E402
from edge_lorax.runtime.pte import user_tensors  # noqa: E402
from helpers.decoder import run  # noqa: E402

PROMPT = [5, 9, 14, 3, 22, 7]
CACHE = 32  # KV positions: the prompt and 10 new tokens fit


@pytest.fixture(scope="module")
def pte(decoder_bundle, tmp_path_factory):
    root, model = decoder_bundle
    out = tmp_path_factory.mktemp("pte") / "bundle"
    run("export", "--model", model, "--subspace", root / "sub", "--coeffs", root / "u3.npz", "-o", out,
        "--target", "executorch", "--max-cache-len", CACHE)
    return out


def _method(bundle):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(bundle / "model.pte")).load_method("forward")


def _torch(decoder_bundle, user: str):
    """The tiny Llama with the subspace injected and `user`'s coefficients, float32."""
    root, model = decoder_bundle
    net = load_causal_lm(model)
    inject_subspace(net, read_subspace(root / "sub"), coeffs=read_user(root / user).inputs())
    return net


@pytest.mark.slow
def test_two_users_swap_on_one_program_and_equal_torch(decoder_bundle, pte):
    root, _ = decoder_bundle
    method, runs = _method(pte), {}
    for user in ("u3.npz", "u0.npz", "u3.npz"):
        tensors = user_tensors(pte, root / user)
        ours = executorch_decoder.greedy(method, PROMPT, tensors, 10)
        logits = executorch_decoder.prefill(method, PROMPT, [torch.from_numpy(t) for t in tensors])
        net = _torch(decoder_bundle, user)
        with torch.no_grad():
            want = net(torch.tensor([PROMPT])).logits.numpy()
            theirs = net.generate(torch.tensor([PROMPT]), max_new_tokens=10, min_new_tokens=10, do_sample=False)
        assert logits.shape == want.shape == (1, len(PROMPT), 80)
        assert np.abs(logits - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
        assert ours == theirs[0, len(PROMPT):].tolist()
        runs.setdefault(user, []).append((ours, logits))
    (a, la), (b, lb) = runs["u3.npz"]
    assert a == b and np.array_equal(la, lb)  # the same user again, after another: the same output, bit for bit
    assert np.abs(runs["u3.npz"][0][1] - runs["u0.npz"][0][1]).max() > 1e-3  # the users differ


@pytest.mark.slow
def test_manifest_binds_the_onnx_bundles_user_inputs(decoder_bundle, pte):
    root, _ = decoder_bundle
    manifest, onnx_manifest = read_manifest(pte), read_manifest(root / "bundle")
    assert manifest["target"] == "executorch" and manifest["task"] == "causal-lm"
    assert [u["name"] for u in manifest["user_inputs"]] == [u["name"] for u in onnx_manifest["user_inputs"]]
    assert [i["name"] for i in manifest["inputs"][:2]] == ["input_ids", "cache_position"]
    assert manifest["method"]["max_cache_len"] == CACHE
    check = manifest["verification"]["fp32"]
    assert check["greedy_tokens"]["equal"] and check["response"] > 0.99
    assert check["max_abs_diff"] <= 1e-4 * check["scale"] + check["floor_factor"] * max(check["fp32_floor"])
    assert _method(pte).metadata.num_inputs() == len(manifest["inputs"])


@pytest.mark.parametrize("flag", [["--quantize", "int8"], ["--per-example"]])
def test_refused_before_any_work(decoder_bundle, tmp_path, flag):
    root, model = decoder_bundle
    result = run("export", "--model", model, "--subspace", root / "sub", "-o", tmp_path / "out", "--target",
                 "executorch", *flag, ok=False)
    assert result.exit_code != 0 and flag[0] in result.output and "--target executorch for decoders" in result.output
    assert not (tmp_path / "out").exists()


def test_cache_length_is_refused_outside_a_decoder_program(decoder_bundle, tmp_path):
    root, model = decoder_bundle
    result = run("export", "--model", model, "--subspace", root / "sub", "-o", tmp_path / "out", "--max-cache-len",
                 64, ok=False)
    assert result.exit_code != 0 and "--max-cache-len" in result.output and "genai-decoder" in result.output
    assert not (tmp_path / "out").exists()
