"""formats.user.read_user reads each member's .npy header before decompressing anything: a small file that declares a
huge tensor, a zip bomb, or a member of another dtype is refused in one line, in well under a second, without the
memory the declaration asks for. Also a Hypothesis fuzz over the declared shapes."""

import io
import json
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_lorax.formats import names
from edge_lorax.formats.user import MAX_ELEMENTS, UserError, read_user

META = np.array(json.dumps({"fingerprint": "0123456789abcdef", "format_version": 1}))


def npz_with(path, members: dict):
    """An .npz whose members are raw bytes (a forged header or a crafted payload) or arrays."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in members.items():
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, value, allow_pickle=False)
                value = buf.getvalue()
            zf.writestr(key + ".npy", value)
    return path


def forged(shape, dtype="<f4", payload: bytes = b"") -> bytes:
    """An .npy header declaring `shape` followed by `payload` (not the bytes it declares)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + payload


def test_a_small_file_declaring_a_huge_tensor_is_refused_fast(tmp_path):
    """3 MB of zeros declared as (8, 1e8) float32 (3.2 GB): refused from the header, no 3.2 GB allocation."""
    path = npz_with(tmp_path / "huge.npz", {names.META_KEY: META,
                                             "m.coeff_A": forged((8, 100_000_000), payload=bytes(3_000_000))})
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"m.coeff_A declares \(8, 100000000\) in") as err:
        read_user(path)
    assert time.perf_counter() - start < 2 and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    """A member declaring (2, 2) whose deflated payload inflates to 200 MB."""
    path = npz_with(tmp_path / "bomb.npz", {names.META_KEY: META, "m.coeff_A": forged((2, 2), payload=bytes(200_000_000))})
    assert path.stat().st_size < 1_000_000
    with pytest.raises(UserError, match="bytes unpacked"):
        read_user(path)


@pytest.mark.parametrize("dtype, match", [("<f8", "is float64, expected float32"), ("<i4", "is int32, expected float32"),
                                          ("|O", "pickled objects")])
def test_other_dtypes_are_refused_from_the_header(tmp_path, dtype, match):
    path = npz_with(tmp_path / "d.npz", {names.META_KEY: META, "m.coeff_A": forged((2, 2), dtype, bytes(32))})
    with pytest.raises(UserError, match=match):
        read_user(path)


def test_a_user_at_the_bound_still_reads(tmp_path):
    arr = np.zeros((4, 8), np.float32)
    user = read_user(npz_with(tmp_path / "ok.npz", {names.META_KEY: META, "m.coeff_A": arr, "m.coeff_B": arr.T.copy()}))
    assert user.coefficients["m.coeff_A"].shape == (4, 8) and MAX_ELEMENTS >= 1 << 20


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 2**40), min_size=0, max_size=4), payload=st.integers(0, 4096))
def test_declared_shapes_fuzz(tmp_path_factory, shape, payload):
    """Any declared shape with any payload: a User whose arrays have the declared shape, or one UserError line."""
    path = npz_with(tmp_path_factory.mktemp("f") / "u.npz", {names.META_KEY: META,
                                                               "m.coeff_A": forged(shape, payload=bytes(payload))})
    try:
        user = read_user(path)
    except UserError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert user.coefficients["m.coeff_A"].shape == tuple(shape) and int(np.prod(shape)) * 4 == payload


def test_a_huge_meta_member_is_refused_before_it_is_inflated(tmp_path):
    """__meta__ is one element of any length: bounded by its unpacked bytes (the audit's 1 GB __meta__ cost 8.9 s)."""
    path = npz_with(tmp_path / "meta.npz", {names.META_KEY: forged((), "<U250000000", bytes(2_000_000)),
                                             "m.coeff_A": np.zeros((2, 2), np.float32)})
    start = time.perf_counter()
    with pytest.raises(UserError, match="__meta__ declares"):
        read_user(path)
    assert time.perf_counter() - start < 2
