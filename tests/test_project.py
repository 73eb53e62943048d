"""Projection and reconstruction: in-span adapters survive the round trip exactly, PEFT loads the result and
gives the original outputs; errors are the stated ΔW ratios; the coefficients file is strict and deterministic."""

import copy
import zipfile

import numpy as np
import pytest

from edge_lorax.builder.merge import merged_model
from edge_lorax.builder.project import delta_weights, lora_factors, project_adapter, reconstruct_adapter
from edge_lorax.builder.subspace import build_subspace
from edge_lorax.formats import names
from edge_lorax.formats.peft import AdapterError, delta_weight, read_adapter, read_factors, write_adapter
from edge_lorax.formats.user import User, UserError, read_user, write_user
from helpers import BASE_IDS, in_span_factors, model_outputs, token_batch


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def planted(planted_adapters, tmp_path_factory):
    """{arch: (subspace K=3, held-out in-span adapter dir of rank 2)}."""
    out = {}
    for arch in ("bert", "gpt2"):
        dirs, bases = planted_adapters(arch, n=6, k=3)
        held = write_adapter(tmp_path_factory.mktemp("held") / arch, in_span_factors(bases, 2, seed=99), BASE_IDS[arch],
                             fan_in_fan_out=arch == "gpt2")
        out[arch] = (build_subspace(dirs, components=3), held)
    return out


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_in_span_adapter_round_trips_and_peft_agrees(arch, planted, tmp_path, tiny_model):
    from peft import PeftModel

    sub, held = planted[arch]
    result = project_adapter(sub, held)
    assert result.overall <= 1e-5 and max(result.errors.values()) <= 1e-5
    assert set(result.errors) == set(sub.modules)
    write_user(result.coeffs, tmp_path / "user.npz")
    user = read_user(tmp_path / "user.npz")
    for module in sub.modules:
        ca, cb = user.pair(module)
        assert ca.shape == (3, 3) and cb.shape == (3, 3)  # rank-2 source zero-padded to the subspace's r=3
    rec = reconstruct_adapter(sub, user, tmp_path / "rec")
    original, rebuilt = read_adapter(held), read_adapter(rec)
    assert rebuilt.fan_in_fan_out is (arch == "gpt2") and rebuilt.base_model == BASE_IDS[arch]
    for module in sub.modules:
        assert rel_err(delta_weight(rebuilt, module), delta_weight(original, module)) <= 1e-5
    base, ids = tiny_model(arch), token_batch()
    want = model_outputs(PeftModel.from_pretrained(copy.deepcopy(base), held).eval(), ids)
    got = model_outputs(PeftModel.from_pretrained(copy.deepcopy(base), rec).eval(), ids)
    assert (want - model_outputs(base, ids)).abs().max() > 0.1  # the adapter changes the model
    assert (got - want).abs().max() <= 1e-5


def test_projection_error_is_the_relative_delta_w_residual(save_adapter):
    dirs = [save_adapter("bert", weight_seed=s, r=4) for s in range(1, 5)]
    sub = build_subspace(dirs, components=5)
    held = save_adapter("bert", weight_seed=50, r=2, lora_alpha=4)
    result = project_adapter(sub, held)
    info, num, den = read_adapter(held), 0.0, 0.0
    for module, ms in sub.modules.items():
        A, B = read_factors(info, module)
        CA, CB = ms.components_A.astype(np.float64), ms.components_B.astype(np.float64)
        dw, approx = B @ A, CB @ CB.T @ B @ A @ CA.T @ CA
        assert result.errors[module] == pytest.approx(rel_err(approx, dw), rel=1e-6)
        num, den = num + np.square(approx - dw).sum(), den + np.square(dw).sum()
        np.testing.assert_allclose(delta_weights(sub, result.coeffs)[module], approx, atol=1e-5)
    assert result.overall == pytest.approx((num / den) ** 0.5, rel=1e-6)
    assert 0.05 < result.overall < 1.0  # out of span: a real, partial error
    assert result.coeffs.meta["method"] == "projection" and result.coeffs.fingerprint == sub.fingerprint


def test_higher_rank_source_gets_the_best_rank_r_fit(planted_adapters, tmp_path):
    """A rank-3 LoRA on a subspace of coefficient rank 2: the truncated SVD of its projection, the optimal error."""
    dirs, bases = planted_adapters("bert", n=6, k=3, ranks=(2,))
    sub = build_subspace(dirs, components=3)
    held = write_adapter(tmp_path / "r3", in_span_factors(bases, 3, seed=5), BASE_IDS["bert"])
    result = project_adapter(sub, held)
    info = read_adapter(held)
    for module, ms in sub.modules.items():
        ca, cb = result.coeffs.pair(module)
        assert ca.shape == (2, 3) and cb.shape == (3, 2)
        dw = delta_weight(info, module)
        S = np.linalg.svd(dw, compute_uv=False)  # in span: the projection is dw itself, rank 3
        best = float(np.sqrt((S[2:] ** 2).sum()) / np.linalg.norm(dw))
        assert result.errors[module] == pytest.approx(best, rel=1e-4) and best > 1e-3
        got = ms.components_B @ cb @ ca @ ms.components_A
        assert rel_err(got, dw) == pytest.approx(best, rel=1e-4)


def test_lora_factors_accept_a_prefix_of_k(planted):
    sub, held = planted["bert"]
    coeffs = project_adapter(sub, held).coeffs
    short = User(sub.fingerprint, {k: (v[:, :2] if k.endswith("coeff_A") else v[:2]) for k, v in coeffs.coefficients.items()})
    for module, (a, b) in lora_factors(sub, short).items():
        ms = sub.modules[module]
        ca, cb = short.pair(module)
        np.testing.assert_allclose(b @ a, ms.components_B[:, :2] @ cb @ ca @ ms.components_A[:2], atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_merged_model_is_base_plus_delta_w(arch, planted, tiny_model):
    sub, held = planted[arch]
    coeffs = project_adapter(sub, held).coeffs
    base = tiny_model(arch)
    before = {m: base.get_submodule(m).weight.detach().clone() for m in sub.modules}
    model = merged_model(base, sub, coeffs)
    for module, dw in delta_weights(sub, coeffs).items():
        layer = model.get_submodule(module)
        assert type(layer).__name__ in ("Linear", "Conv1D")  # unwrapped again
        got = (layer.weight.detach() - before[module]).numpy()
        np.testing.assert_allclose(got.T if arch == "gpt2" else got, dw, atol=1e-6)


def test_head_goes_to_modules_to_save(planted, tmp_path, tiny_model):
    from peft import PeftModel

    sub, held = planted["bert"]
    coeffs = project_adapter(sub, held).coeffs
    rng = np.random.default_rng(0)
    head = {names.HEAD_WEIGHT_T: rng.standard_normal((32, 2)).astype(np.float32),
            names.HEAD_BIAS: rng.standard_normal(2).astype(np.float32)}
    rec = reconstruct_adapter(sub, User(sub.fingerprint, coeffs.coefficients, head), tmp_path / "rec")
    model = PeftModel.from_pretrained(tiny_model("bert"), rec).merge_and_unload()
    np.testing.assert_allclose(model.classifier.weight.detach().numpy(), head[names.HEAD_WEIGHT_T].T, atol=0)
    np.testing.assert_allclose(model.classifier.bias.detach().numpy(), head[names.HEAD_BIAS], atol=0)


def test_projection_refuses_other_targets_or_base(planted, save_adapter):
    sub, _ = planted["bert"]
    other = save_adapter("bert", weight_seed=3, target_modules=["query"])
    with pytest.raises(AdapterError, match=rf"{other}: 2 module\(s\) of the subspace not in the adapter "
                                           r"\(first: bert\.encoder\.layer\.0\.attention\.self\.value\)"):
        project_adapter(sub, other)
    foreign = save_adapter("bert", weight_seed=3, base_id="someone/other-bert")
    with pytest.raises(AdapterError, match=rf"{foreign}: base model 'someone/other-bert', subspace built for"):
        project_adapter(sub, foreign)


# ---- the coefficients file ----

def test_coefficients_file_is_deterministic_and_exact(planted, tmp_path):
    sub, held = planted["gpt2"]
    coeffs = project_adapter(sub, held).coeffs
    write_user(coeffs, tmp_path / "a.npz")
    write_user(project_adapter(sub, held).coeffs, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = read_user(tmp_path / "a.npz")
    assert loaded.fingerprint == sub.fingerprint and loaded.meta["source"] == "gpt2"
    for key, value in coeffs.coefficients.items():
        np.testing.assert_array_equal(loaded.coefficients[key], value)
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:  # plain numpy reads it
        assert set(npz.files) == {*coeffs.coefficients, names.META_KEY}
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_coefficients_for_another_subspace_refused(planted):
    sub, held = planted["bert"]
    coeffs = project_adapter(sub, held).coeffs
    stranger = User("0123456789abcdef", coeffs.coefficients)
    with pytest.raises(UserError, match=rf"made for subspace 0123456789abcdef, this one is {sub.fingerprint}"):
        lora_factors(sub, stranger)


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_bad_coefficient_files_refused(tmp_path):
    meta = np.array('{"fingerprint": "x"}')
    ok = np.zeros((2, 3), np.float32)
    cases = {
        "pickled objects, which are never loaded": _write_npz(tmp_path / "p.npz", __meta__=meta,
                                                               **{"m.coeff_A": np.array([{"a": 1}], dtype=object)}),
        "no __meta__ entry": _write_npz(tmp_path / "m.npz", **{"m.coeff_A": ok}),
        "is float64, expected float32": _write_npz(tmp_path / "d.npz", __meta__=meta, **{"m.coeff_A": ok.astype(np.float64)}),
        "holds NaN or Inf": _write_npz(tmp_path / "n.npz", __meta__=meta, **{"m.coeff_A": np.full((2, 3), np.inf, np.float32)}),
        "no such user file": tmp_path / "missing.npz",
    }
    (tmp_path / "text.npz").write_text("not a zip")
    cases["not an .npz file"] = tmp_path / "text.npz"
    for message, path in cases.items():
        with pytest.raises(UserError, match=message):
            read_user(path)
