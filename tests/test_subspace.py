"""The subspace builder: planted subspaces recovered, exact against a batch SVD, K selection, mean modes,
augmentation, determinism, compatibility checks and the saved files."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from edge_lorax.builder.subspace import build_module, build_subspace
from edge_lorax.formats.peft import AdapterError, file_sha256, read_adapter, read_factors
from edge_lorax.formats.subspace import read_subspace, write_subspace
from helpers import corrupt_copy


def sin_largest_angle(rows: np.ndarray, basis: np.ndarray) -> float:
    """sin of the largest principal angle between span(rows) and span(basis) (orthonormal rows), rows ⊆ basis."""
    rows = rows.astype(np.float64)
    return float(np.linalg.norm(rows - rows @ basis.T @ basis, 2))


def assert_orthonormal(rows: np.ndarray, atol=1e-6):
    np.testing.assert_allclose(rows.astype(np.float64) @ rows.T.astype(np.float64), np.eye(len(rows)), atol=atol)


def centred_stack(dirs, module, side):
    """The full stack as numpy would build it in one go: A rows (side A) or B columns as rows (side B), centred."""
    infos = [read_adapter(d) for d in dirs]
    rows = np.vstack([read_factors(i, module)[0] if side == "A" else read_factors(i, module)[1].T for i in infos])
    return rows, rows - rows.mean(axis=0)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("mean", ["drop", "keep"])
def test_planted_subspace_is_recovered(arch, mean, planted_adapters):
    dirs, bases = planted_adapters(arch, n=6, k=3)
    sub = build_subspace(dirs, components=3, mean=mean)
    assert set(sub.modules) == set(bases)
    for module, ms in sub.modules.items():
        assert ms.k == 3 and ms.principal == 3 and ms.rank == 3
        assert sin_largest_angle(ms.components_A, bases[module]["A"]) < 1e-5
        assert sin_largest_angle(ms.components_B.T, bases[module]["B"]) < 1e-5
        assert_orthonormal(ms.components_A)
        assert_orthonormal(ms.components_B.T)
        recorded = sub.config["modules"][module]["explained_variance_A"]
        if mean == "drop":
            assert recorded == pytest.approx(1.0, abs=1e-5)
        else:  # the mean takes one of the three slots: two principal directions count
            assert recorded == pytest.approx(float(ms.explained_A[:2].sum()), abs=1e-6) and recorded < 0.999


def test_keep_mean_makes_the_unit_mean_component_zero(planted_adapters, save_adapter):
    dirs = [save_adapter("bert", weight_seed=s, r=r) for s, r in [(1, 2), (2, 4), (3, 4), (4, 2)]]
    keep, drop = build_subspace(dirs, components=4, mean="keep"), build_subspace(dirs, components=4, mean="drop")
    module = "bert.encoder.layer.0.attention.self.query"
    for side in ("A", "B"):
        rows, _ = centred_stack(dirs, module, side)
        unit = rows.mean(axis=0) / np.linalg.norm(rows.mean(axis=0))
        comps = keep.modules[module].components_A if side == "A" else keep.modules[module].components_B.T
        assert abs(float(comps[0] @ unit)) == pytest.approx(1.0, abs=1e-6)
        assert_orthonormal(comps)
        dropped = drop.modules[module].components_A if side == "A" else drop.modules[module].components_B.T
        assert abs(float(dropped[0] @ unit)) < 0.99  # drop does not put the mean first
    assert keep.config["mean"] == "keep" and drop.config["mean"] == "drop"
    assert keep.fingerprint != drop.fingerprint


def test_small_stack_is_exactly_the_batch_svd(save_adapter):
    """Heterogeneous ranks and rslora, streamed in chunks of 3 rows: equal to numpy's SVD of the whole stack."""
    dirs = [save_adapter("bert", weight_seed=1, r=2), save_adapter("bert", weight_seed=2, r=4, lora_alpha=16),
            save_adapter("bert", weight_seed=3, r=4, use_rslora=True), save_adapter("bert", weight_seed=4, r=3)]
    infos = [read_adapter(d) for d in dirs]
    module = "bert.encoder.layer.1.attention.self.value"
    chunked = build_module(infos, module, components=6, chunk_rows=3, mean="drop")
    whole = build_module(infos, module, components=6, chunk_rows=10_000, mean="drop")
    for side, got in (("A", chunked.components_A), ("B", chunked.components_B.T)):
        _, centred = centred_stack(dirs, module, side)
        _, S, Vt = np.linalg.svd(centred, full_matrices=False)
        np.testing.assert_allclose(np.abs(np.sum(got[:6] * Vt[:6], axis=1)), 1.0, atol=1e-6)  # same axes up to sign
        ratio = chunked.explained_A if side == "A" else chunked.explained_B
        np.testing.assert_allclose(ratio[:12], (S**2 / (S**2).sum())[:12], atol=1e-6)
        assert len(ratio) == 12  # 13 rows, centred: rank 12
    np.testing.assert_allclose(chunked.components_A, whole.components_A, atol=1e-6)
    np.testing.assert_allclose(chunked.components_B, whole.components_B, atol=1e-6)
    assert chunked.rank == 4


def test_truncated_stream_keeps_max_rank_directions(save_adapter):
    dirs = [save_adapter("bert", weight_seed=s, r=4) for s in range(1, 5)]
    ms = build_module([read_adapter(d) for d in dirs], "bert.encoder.layer.0.attention.self.query", components=3,
                      max_rank=5, chunk_rows=4)
    assert len(ms.explained_A) == 5 and ms.k == 3
    assert_orthonormal(ms.components_A)
    assert float(ms.explained_A.sum()) < 1.0


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_explained_variance_picks_the_smallest_k(target, save_adapter):
    dirs = [save_adapter("bert", weight_seed=s, r=4) for s in range(1, 5)]
    sub = build_subspace(dirs, explained_variance=target, mean="drop")  # the paper's centred stack
    for module, ms in sub.modules.items():
        ks = []
        for side in ("A", "B"):
            _, centred = centred_stack(dirs, module, side)
            S = np.linalg.svd(centred, compute_uv=False)
            ks.append(int(np.argmax(np.cumsum(S**2) / (S**2).sum() >= target)) + 1)
        assert ms.k == max(ks), module
        cfg = sub.config["modules"][module]
        assert min(cfg["explained_variance_A"], cfg["explained_variance_B"]) >= target - 1e-6
    assert sub.config["selection"] == {"explained_variance": target}
    keep = build_subspace(dirs, explained_variance=target, mean="keep")
    assert all(keep.modules[m].k == sub.modules[m].k + 1 for m in sub.modules)  # + the mean direction
    assert keep.config["modules"] == {m: {**c, "K": c["K"] + 1, "principal": c["principal"] + 1}
                                      for m, c in sub.config["modules"].items()}  # same variance recorded


def test_k_beyond_rank_refused_with_augment_suggestion(planted_adapters):
    dirs, _ = planted_adapters("bert", n=6, k=3)
    with pytest.raises(ValueError, match=r"K=5 exceeds the rank 3 .*--components 3 --augment 2"):
        build_subspace(dirs, components=5, mean="drop")
    with pytest.raises(ValueError, match=r"K=4 exceeds the rank 3 .*--components 3 --augment 1"):
        build_subspace(dirs, components=4, mean="keep")  # the mean lies inside the planted span: no extra direction
    with pytest.raises(ValueError, match="exactly one of --components K or --explained-variance F"):
        build_subspace(dirs)
    with pytest.raises(ValueError, match="--mean must be one of"):
        build_subspace(dirs, components=2, mean="add")
    with pytest.raises(ValueError, match="no adapters given"):
        build_subspace([], components=2)


def test_augmentation_is_orthonormal_and_seeded(planted_adapters):
    dirs, bases = planted_adapters("bert", n=6, k=3)
    sub = build_subspace(dirs, components=3, augment=4, seed=7)
    again = build_subspace(dirs, components=3, augment=4, seed=7)
    other = build_subspace(dirs, components=3, augment=4, seed=8)
    for module, ms in sub.modules.items():
        assert ms.k == 7 and ms.principal == 3
        assert sub.config["modules"][module]["augmented"] == 4
        assert_orthonormal(ms.components_A)
        assert_orthonormal(ms.components_B.T)
        assert sin_largest_angle(ms.components_A[:3], bases[module]["A"]) < 1e-5  # principal rows first
        np.testing.assert_array_equal(ms.components_A, again.modules[module].components_A)
        np.testing.assert_array_equal(ms.components_A[:3], other.modules[module].components_A[:3])
        assert np.abs(ms.components_A[3:] - other.modules[module].components_A[3:]).max() > 0.1
        assert np.abs(ms.components_B[:, 3:] - other.modules[module].components_B[:, 3:]).max() > 0.1
    assert sub.fingerprint == again.fingerprint != other.fingerprint


def test_same_inputs_give_bit_identical_files(save_adapter, tmp_path):
    dirs = [save_adapter("gpt2", weight_seed=s, r=r) for s, r in [(1, 2), (2, 4), (3, 3)]]
    for name in ("one", "two"):
        write_subspace(build_subspace(dirs, components=4, augment=2, mean="keep"), tmp_path / name)
    for fname in ("subspace_config.json", "subspace.safetensors"):
        assert (tmp_path / "one" / fname).read_bytes() == (tmp_path / "two" / fname).read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        write_subspace(build_subspace(dirs, components=2), tmp_path / "one")
    assert (tmp_path / "one" / "subspace.safetensors").read_bytes() == (tmp_path / "two" / "subspace.safetensors").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_saved_files_hold_what_the_format_promises(save_adapter, tmp_path):
    dirs = [save_adapter("gpt2", weight_seed=s, r=r) for s, r in [(1, 2), (2, 4), (3, 3)]]
    sub = build_subspace(dirs, components=4)
    write_subspace(sub, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "subspace_config.json").read_text())
    tensors = load_file(str(tmp_path / "s" / "subspace.safetensors"))
    assert cfg["format_version"] == 1 and cfg["kind"] == "edge-lorax-subspace"
    assert cfg["base_model"] == "edge-lorax/tiny-random-gpt2" and cfg["fan_in_fan_out"] is True
    assert [s["sha256"] for s in cfg["sources"]] == [file_sha256(d / "adapter_model.safetensors") for d in dirs]
    assert [s["ranks"] for s in cfg["sources"]] == [[2], [4], [3]]
    module = "transformer.h.0.attn.c_attn"
    assert cfg["modules"][module] == {**cfg["modules"][module], "out": 96, "in": 32, "K": 4, "r": 4, "principal": 4,
                                      "augmented": 0}
    assert tensors[f"{module}.components_A"].shape == (4, 32) and tensors[f"{module}.components_B"].shape == (96, 4)
    assert tensors[f"{module}.components_A"].dtype == np.float32
    loaded = read_subspace(tmp_path / "s")
    assert loaded.fingerprint == sub.fingerprint == cfg["fingerprint"]
    np.testing.assert_array_equal(loaded.modules[module].components_B, sub.modules[module].components_B)


def test_edited_subspace_refused(save_adapter, tmp_path):
    dirs = [save_adapter("bert", weight_seed=s) for s in (1, 2)]
    write_subspace(build_subspace(dirs, components=2), tmp_path / "s")
    cfg_path = tmp_path / "s" / "subspace_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["seed"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="fingerprint mismatch, the files were edited or mixed"):
        read_subspace(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a subspace folder"):
        read_subspace(tmp_path / "empty")


def test_disagreeing_adapters_refused_naming_adapter_and_module(save_adapter, tmp_path):
    base = save_adapter("bert", weight_seed=1)
    other_targets = save_adapter("bert", weight_seed=2, target_modules=["query", "key"])
    with pytest.raises(AdapterError, match=rf"{other_targets}: target modules differ from .*attention\.self\.(key|value)"):
        build_subspace([base, other_targets], components=2)
    wider = save_adapter("bert", weight_seed=3, hidden=48)
    with pytest.raises(AdapterError, match=rf"{wider}: module bert\.encoder\.layer\.0\.attention\.self\.query is \(48, 48\)"):
        build_subspace([base, wider], components=2)
    foreign = save_adapter("bert", weight_seed=4, base_id="someone/other-bert")
    with pytest.raises(AdapterError, match=rf"{foreign}: base model 'someone/other-bert' differs .*--allow-base-mismatch"):
        build_subspace([base, foreign], components=2)
    sub = build_subspace([base, foreign], components=2, allow_base_mismatch=True)
    assert sub.base_model == "edge-lorax/tiny-random-bert"


def test_same_base_under_another_org_or_case_is_accepted(save_adapter):
    a = save_adapter("bert", weight_seed=1)
    b = save_adapter("bert", weight_seed=2, base_id="Mirror/Tiny-Random-BERT")
    assert build_subspace([a, b], components=2).base_model == "edge-lorax/tiny-random-bert"


def test_non_finite_source_refused_during_build(save_adapter, tmp_path):

    bad = corrupt_copy(save_adapter("bert", weight_seed=1), tmp_path / "nan", "layer.1.attention.self.query.lora_A.weight",
                       np.nan)
    with pytest.raises(AdapterError, match=r"NaN or Inf in bert\.encoder\.layer\.1\.attention\.self\.query"):
        build_subspace([save_adapter("bert", weight_seed=2), bad], components=2)
    shutil.rmtree(bad)
