"""Issue 11, the user / bundle / runtime / export side: every bad input is refused in one line naming the file or
option, exit 1, no traceback, nothing left at the target or beside it; and what must be accepted is (a user of lower
K'/r', a user's own labels, a rank-4 --coeffs user exported for an r=8 subspace).

The cases of ../shared/cases/users/ are re-created against the tiny subspace (fast) and, where the real files are
there, run as they are: their refusals happen before the fingerprint is compared, so the tiny bundle serves them too.
The real files on the real demo bundle (MiniLM) are in the slow test at the end.
"""

import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.cli import cli
from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.user import User, write_user
from edge_lorax.runtime import load_user, make_user, open_bundle, predict, run_arrays, run_mixed
from helpers.runtime import TEXTS, random_user

CASES = Path(__file__).resolve().parent / "cases" / "users"  # a copy of ../shared/cases/users, shipped with the tests
DEMO_FINGERPRINT = "ccd471ef9a78d610"
FIRST = "bert.encoder.layer.0.attention.self.query"
A0 = names.coeff_name(FIRST, names.COEFF_A)


# ------------------------------------------------------------------------------------------------- helpers

def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def listing(folder: Path) -> list:
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


def assert_refused(res, *needles, target=None, before=None):
    """Exit 1, one line `Error: ...` holding every needle, no traceback, no exception but click's exit; the target
    absent and its folder as it was (`before`: its listing before the command)."""
    assert isinstance(res.exception, SystemExit) and res.exit_code == 1, (res.exception, res.output)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    for needle in needles:
        assert str(needle) in res.output, (needle, res.output)
    if target is not None:
        assert not Path(target).exists(), listing(Path(target).parent)
        if before is not None:
            assert listing(Path(target).parent) == before


def npz_arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def save_npz(path, arrays: dict) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def with_meta(src, dst, edit) -> Path:
    """A copy of user file `src` whose __meta__ JSON text is `edit(meta dict)` (a dict, or a raw string)."""
    arrays = npz_arrays(src)
    meta = edit(json.loads(str(arrays[names.META_KEY])))
    arrays[names.META_KEY] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    return save_npz(dst, arrays)


def with_tensor(src, dst, key, value) -> Path:
    arrays = npz_arrays(src)
    arrays[key] = value
    return save_npz(dst, arrays)


def corrupt_header(src, dst) -> Path:
    """A copy whose first coefficient member's .npy header is garbage (as ../shared/cases/users/corrupt_npy_header)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == A0 + ".npy":
                data = data[:10] + b"garbage!" + data[18:]
            zout.writestr(info, data)
    return Path(dst)


def truncated_member(src, dst) -> Path:
    """A valid zip whose first coefficient member stops halfway through its data."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, data[: len(data) // 2] if info.filename == A0 + ".npy" else data)
    return Path(dst)


def bad_user_files(setup, tmp: Path) -> list:
    """(file, words the refusal must hold) for every bad user file of this side of the issue."""
    src = setup.users[1]
    return [
        (with_meta(src, tmp / "v99.npz", lambda m: {**m, "format_version": 99}), "format_version 99"),
        (with_meta(src, tmp / "vstr.npz", lambda m: {**m, "format_version": "1"}), "format_version '1'"),
        (with_meta(src, tmp / "vtrue.npz", lambda m: {**m, "format_version": True}), "format_version True"),
        (corrupt_header(src, tmp / "header.npz"), "a member is damaged"),
        (truncated_member(src, tmp / "truncated.npz"), "a member is damaged"),
        (with_meta(src, tmp / "metajson.npz", lambda m: "{not json"), "is not a JSON object"),
        (with_meta(src, tmp / "metalist.npz", lambda m: "[1, 2]"), "is not a JSON object"),
        (with_meta(src, tmp / "metafp.npz", lambda m: {**m, "fingerprint": 12}), "fingerprint string"),
        (with_meta(src, tmp / "metalabels.npz", lambda m: {**m, "labels": 3}), "labels is not a list of class names"),
        (with_meta(src, tmp / "metalabels2.npz", lambda m: {**m, "labels": [["a"], "b"]}), "labels is not a list"),
        (with_tensor(src, tmp / "meta2d.npz", names.META_KEY, np.array([["{}"]])), "is not a JSON object"),
        (with_tensor(src, tmp / "huge.npz", A0, np.full((2, 4), 3e38, np.float32)), "3e+38"),
        (with_tensor(src, tmp / "huge_head.npz", names.HEAD_BIAS, np.array([1.0, -2e5], np.float32)), "2e+05"),
        (with_tensor(src, tmp / "int.npz", A0, np.ones((2, 4), np.int32)), "int32, expected float32"),
        (with_tensor(src, tmp / "bigger.npz", A0, np.zeros((3, 4), np.float32)), "has shape (3, 4)"),
        (with_tensor(src, tmp / "pair.npz", A0, np.zeros((2, 3), np.float32)), "coeff_B must be coeff_A transposed"),
    ]


def real_cases() -> list:
    """The refused user cases of ../shared/cases/users/ that exist here, with what their refusal must say."""
    cases = [(CASES / "format_version_99.npz", "format_version 99"), (CASES / "corrupt_npy_header.npz", "a member is damaged")]
    return [c for c in cases if c[0].is_file()]


# ------------------------------------------------------------------------------- kind 4/5: bad user files

def test_bad_user_files_refused_by_run(setup, tmp_path):
    cases = bad_user_files(setup, tmp_path) + real_cases()
    assert len(cases) >= 16
    for path, words in cases:
        assert_refused(invoke("run", setup.bundle, "--coeffs", path, TEXTS[0]), path, words)


def test_bad_user_files_refused_by_the_api(bundle, setup, tmp_path):
    for path, words in bad_user_files(setup, tmp_path) + real_cases():
        with pytest.raises(InputError) as err:
            load_user(bundle, path)
        assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def no_export_work(monkeypatch):
    """Export refusals must come before the work: building the graphs fails the test."""
    import edge_lorax.export.encoder_bundle as encoder_bundle

    def started(*args, **kwargs):
        raise AssertionError("the export work started before the input was refused")

    monkeypatch.setattr(encoder_bundle, "prepare_graphs", started)


def test_bad_user_files_refused_by_export_before_the_work(setup, tmp_path, no_export_work):
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    for path, words in bad_user_files(setup, tmp_path) + real_cases():
        out = out_dir / "bundle"
        res = invoke("export", "--model", setup.model, "--subspace", setup.subspace_dir, "--coeffs", path, "-o", out)
        assert_refused(res, path, words, target=out, before=[])


def _adapter_of_version(setup, path: Path, version: int) -> Path:
    import onnxruntime as ort

    from edge_lorax.formats.onnx_adapter import fingerprint_version

    user = random_user(setup.subspace, 1)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(version)
    fmt.set_model_version(fingerprint_version(user.fingerprint))
    values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in user.inputs().items()}
    fmt.set_parameters(values)
    fmt.export_adapter(str(path))
    return path


def test_bad_onnx_adapter_files_refused(setup, tmp_path):
    good = (setup.bundle / f"user0{names.ADAPTER_SUFFIX}").read_bytes()
    (tmp_path / f"cut{names.ADAPTER_SUFFIX}").write_bytes(good[: len(good) // 3])
    (tmp_path / f"junk{names.ADAPTER_SUFFIX}").write_bytes(b"not a flatbuffer at all")
    cases = [(_adapter_of_version(setup, tmp_path / f"v7{names.ADAPTER_SUFFIX}", 7), "adapter_version 7 is not 1"),
             (tmp_path / f"cut{names.ADAPTER_SUFFIX}", "not an ONNX Runtime adapter file"),
             (tmp_path / f"junk{names.ADAPTER_SUFFIX}", "not an ONNX Runtime adapter file")]
    for path, words in cases:
        assert_refused(invoke("run", setup.bundle, "--coeffs", path, TEXTS[0]), path, words)


# ------------------------------------------------------------------------------- kind 4/5: bad bundles

def _copy(setup, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copytree(setup.bundle, dst)
    return dst


def _edit_json(path: Path, edit):
    value = edit(json.loads(path.read_text()))
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def _set(key, value):
    return lambda d: {**d, key: value}


def _manifest_cases(setup, tmp: Path) -> list:
    """(bundle folder, what to edit, words) for manifests the runtime must refuse."""
    outside = tmp / "outside.onnx"
    shutil.copyfile(setup.bundle / names.BUNDLE_MODEL, outside)
    files = json.loads((setup.bundle / names.BUNDLE_MANIFEST).read_text())["files"]
    return [
        ("m-json", lambda d: "{not json", "not readable JSON"),
        ("m-list", lambda d: "[1, 2, 3]", "holds a JSON list"),
        ("m-files", _set("files", ["model.onnx"]), "'files' is a JSON array"),
        ("m-fpnum", _set("fingerprint", 7), "'fingerprint' is a JSON integer"),
        ("m-version", _set("format_version", 99), "format_version 99"),
        ("m-version-str", _set("format_version", "1"), "'format_version' is a JSON string"),
        ("m-labels", _set("labels", "two"), "'labels' is a JSON string"),
        ("m-coeffs", _set("coefficients", {A0: "2x4"}), f"coefficients['{A0}'] is not a list of dims"),
        ("m-up", _set("files", {**files, "fp32": "../outside.onnx"}), "outside the bundle folder"),
        ("m-abs", _set("files", {**files, "fp32": str(outside)}), "outside the bundle folder"),
        ("m-nofp", lambda d: {k: v for k, v in d.items() if k != "fingerprint"}, "no 'fingerprint' key"),
        ("m-otherfp", _set("fingerprint", "0123456789abcdef"), "mixes two exports"),
    ]


def test_bad_manifests_refused(setup, tmp_path):
    for name, edit, words in _manifest_cases(setup, tmp_path):
        folder = _copy(setup, tmp_path, name)
        _edit_json(folder / names.BUNDLE_MANIFEST, edit)
        with pytest.raises(InputError) as err:
            open_bundle(folder)
        assert words in str(err.value) and str(folder) in str(err.value), (name, str(err.value))
        assert_refused(invoke("run", folder, "--coeffs", setup.users[1], TEXTS[0]), folder, words)


def test_model_file_linked_out_of_the_bundle(setup, tmp_path):
    folder = _copy(setup, tmp_path, "linked")
    outside = tmp_path / "elsewhere.onnx"
    (folder / names.BUNDLE_MODEL).rename(outside)
    (folder / names.BUNDLE_MODEL).symlink_to(outside)
    assert_refused(invoke("run", folder, TEXTS[0]), folder, "outside the bundle folder")
    (folder / names.BUNDLE_MODEL).unlink()
    shutil.copyfile(outside, folder / names.BUNDLE_MODEL)
    (folder / names.TOKENIZER_FILE).rename(tmp_path / "tok.json")
    (folder / names.TOKENIZER_FILE).symlink_to(tmp_path / "tok.json")
    assert_refused(invoke("run", folder, TEXTS[0]), folder / names.TOKENIZER_FILE, "links outside the bundle folder")


def test_no_fingerprint_anywhere_serves_nobody(setup, tmp_path):
    """Graph metadata stripped and manifest fingerprint removed: refused at open, so no user of any subspace runs."""
    import onnx

    folder = _copy(setup, tmp_path, "anonymous")
    model = onnx.load(str(folder / names.BUNDLE_MODEL))
    del model.metadata_props[:]
    onnx.save(model, str(folder / names.BUNDLE_MODEL))
    _edit_json(folder / names.BUNDLE_MANIFEST, lambda d: {k: v for k, v in d.items() if k != "fingerprint"})
    with pytest.raises(InputError, match="no 'fingerprint' key; re-export"):
        open_bundle(folder)
    anonymous = write_user(User("", random_user(setup.subspace, 1).coefficients), tmp_path / "anon.npz")
    assert_refused(invoke("run", folder, "--coeffs", anonymous, TEXTS[0]), folder, "no 'fingerprint' key")


def _side_file_cases() -> list:
    """(file in the bundle, new content, words): config.json, tokenizer_config.json, tokenizer.json."""
    cfg, tcfg, tok = names.BUNDLE_CONFIG, "tokenizer_config.json", names.TOKENIZER_FILE
    return [
        (cfg, "{not json", "not readable JSON"),
        (cfg, "[1, 2]", "holds a JSON list"),
        (cfg, {"id2label": ["neg", "pos"]}, "'id2label' is a JSON array"),
        (cfg, {"vocab_size": "many"}, "'vocab_size' is a JSON string"),
        (cfg, {"max_position_embeddings": 1.5}, "'max_position_embeddings' is a JSON number"),
        (cfg, {"pad_token_id": [0]}, "'pad_token_id' is a JSON array"),
        (tcfg, "\xff\xfe not utf-8", "not readable JSON"),
        (tcfg, '"just a string"', "holds a JSON str"),
        (tcfg, {"pad_token": 5}, "pad_token is a JSON int"),
        (tok, "{not json", "not a readable tokenizer"),
        (tok, '{"model": 3}', "not a readable tokenizer"),
        (tok, b"\x00\x01garbage", "not a readable tokenizer"),
    ]


def _write_side(path: Path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_bytes(content.encode("latin-1"))
    else:
        _edit_json(path, lambda d: {**d, **content})


def test_bad_config_and_tokenizer_files_refused(setup, tmp_path):
    for i, (name, content, words) in enumerate(_side_file_cases()):
        folder = _copy(setup, tmp_path, f"side{i}")
        _write_side(folder / name, content)
        assert_refused(invoke("run", folder, "--coeffs", setup.users[1], TEXTS[0]), folder / name, words)
        with pytest.raises(InputError):
            predict(open_bundle(folder), None, TEXTS)


# ------------------------------------------------------------------------------- kind 4/9: options and text

@pytest.mark.parametrize("value", ["257", "600", "0", "-5"])
def test_max_length_out_of_range(setup, value):
    res = invoke("run", setup.bundle, "--max-length", value, TEXTS[0])
    assert_refused(res, "--max-length", f"{value} is out of range; pass 1 to 256")


def test_max_length_api(bundle):
    for value in (257, 0, -5, True, "10", 2.0):
        with pytest.raises(InputError, match="max_length"):
            predict(bundle, None, TEXTS, max_length=value)
    assert len(predict(bundle, None, TEXTS, max_length=256)) == len(TEXTS)


def test_non_utf8_text_argument(setup):
    """Bytes that are not UTF-8 on the command line reach Python as surrogate escapes."""
    bad = b"caf\xe9 ok".decode("utf-8", "surrogateescape")
    assert_refused(invoke("run", setup.bundle, TEXTS[0], bad), "text argument 2", "not valid UTF-8")


def test_non_utf8_argv_in_a_real_process(setup):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edge_lorax", "run", str(setup.bundle), b"caf\xe9"],
                          capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1 and "Traceback" not in err and "not valid UTF-8" in err, err
    assert len(err.strip().splitlines()) == 1


def test_api_misuse_refused(bundle, setup):
    user = load_user(bundle, setup.users[1])
    good = {names.INPUT_IDS: np.array([[2, 5, 3]]), names.ATTENTION_MASK: np.ones((1, 3), np.int64)}
    vocab = bundle.model_config["vocab_size"]
    other_user = replace(user, fingerprint="0123456789abcdef")  # loaded on a bundle of another subspace
    cases = [
        (lambda: predict(bundle, user, "hello"), "texts must be a list of strings, got str"),
        (lambda: predict(bundle, user, b"hello"), "got bytes"),
        (lambda: predict(bundle, user, ["ok", 3]), "texts[1] is a int"),
        (lambda: predict(bundle, user, {"a": 1}), "got dict"),
        (lambda: run_arrays(bundle, user, {**good, names.INPUT_IDS: np.array([[2, -1, 3]])}), "input_ids holds -1"),
        (lambda: run_arrays(bundle, user, {**good, names.INPUT_IDS: np.array([[2, vocab, 3]])}), f"input_ids holds {vocab}"),
        (lambda: run_arrays(bundle, user, {**good, names.ATTENTION_MASK: np.ones((2, 3), np.int64)}),
         "attention_mask has shape (2, 3), input_ids (1, 3)"),
        (lambda: run_arrays(bundle, user, {**good, names.ATTENTION_MASK: np.ones((1, 3), np.float32)}),
         "attention_mask is float32"),
        (lambda: run_arrays(bundle, user, {**good, names.ATTENTION_MASK: np.full((1, 3), 2)}), "attention_mask holds 2"),
        (lambda: run_arrays(bundle, user, {**good, names.INPUT_IDS: np.array([[2.0, 5.0, 3.0]])}), "input_ids is float64"),
        (lambda: run_arrays(bundle, user, {**good, names.INPUT_IDS: np.array([2, 5, 3])}), "input_ids has shape (3,)"),
        (lambda: run_arrays(bundle, user, {**good, names.INPUT_IDS: np.zeros((1, 0), np.int64)}), "input_ids has shape (1, 0)"),
        (lambda: run_arrays(bundle, user, {**good, names.INPUT_IDS: [[1, 2], [3]]}), "input_ids: not a rectangular array"),
        (lambda: run_arrays(bundle, user, {**good, names.TOKEN_TYPE_IDS: np.full((1, 3), 9)}), "token_type_ids holds 9"),
        (lambda: run_arrays(bundle, user, {**good, "labels": np.zeros(1)}), "input 'labels' is not a token input"),
        (lambda: run_arrays(bundle, user, {names.ATTENTION_MASK: good[names.ATTENTION_MASK]}), "input input_ids is required"),
        (lambda: run_arrays(bundle, user, [good]), "inputs must be a dict"),
        (lambda: run_arrays(bundle, user, {names.INPUT_IDS: np.ones((1, 300), np.int64),
                                           names.ATTENTION_MASK: np.ones((1, 300), np.int64)}), "at most 256"),
        (lambda: run_arrays(bundle, user, good, outputs=["nope"]), "not among the graph's outputs"),
        (lambda: make_user(bundle, [1, 2]), "a user is a dict of arrays"),
        (lambda: run_arrays(bundle, str(setup.users[1]), good), "user must be a LoadedUser"),
        (lambda: run_arrays(bundle, other_user, good), "made for subspace 0123456789abcdef"),
        (lambda: load_user(bundle, None), "needs a user file path"),
        (lambda: run_mixed(open_bundle(setup.per_example), [user], {**good, names.INPUT_IDS: np.array([[2, 5, 3]] * 2),
                                                                   names.ATTENTION_MASK: np.ones((2, 3), np.int64)}),
         "1 users for a batch of 2"),
    ]
    for call, words in cases:
        with pytest.raises(InputError) as err:
            call()
        assert words in str(err.value) and "\n" not in str(err.value), (words, str(err.value))
    assert run_arrays(bundle, user, good)[names.LOGITS].shape == (1, 2)  # the good input still runs
    assert run_arrays(bundle, user, {**good, names.ATTENTION_MASK: np.ones((1, 3), bool)})[names.LOGITS].shape == (1, 2)


# ------------------------------------------------------------------------------- kind 7: per-user information

def _labelled_user(setup, tmp: Path, labels, head: bool = True) -> Path:
    user = random_user(setup.subspace, 5, head=head)
    return write_user(User(user.fingerprint, user.coefficients, user.head, {**user.meta, "labels": labels}),
                      tmp / f"labelled{len(labels)}{head}.npz")


def test_users_own_labels_are_printed(setup, bundle, tmp_path):
    """A user trained on ham/spam prints ham/spam, not the bundle's negative/positive (case users/ham_spam_labels)."""
    path = _labelled_user(setup, tmp_path, ["ham", "spam"])
    res = invoke("run", setup.bundle, "--coeffs", path, "--json", *TEXTS)
    assert res.exit_code == 0, res.output
    preds = json.loads(res.output)["predictions"]
    assert {p["label"] for p in preds} <= {"ham", "spam"} and all(set(p["scores"]) == {"ham", "spam"} for p in preds)
    assert {p.label for p in predict(bundle, load_user(bundle, path), TEXTS)} <= {"ham", "spam"}
    assert {p.label for p in predict(bundle, load_user(bundle, setup.users[1]), TEXTS)} <= {"negative", "positive"}


def test_labels_that_do_not_fit_the_head_are_not_used(setup, bundle, tmp_path):
    three = load_user(bundle, _labelled_user(setup, tmp_path, ["a", "b", "c"]))  # 3 names, a 2-class head
    headless = load_user(bundle, _labelled_user(setup, tmp_path, ["x", "y"], head=False))  # the bundle's head
    for user in (three, headless):
        assert user.labels is None
        assert {p.label for p in predict(bundle, user, TEXTS)} <= {"negative", "positive"}


def _lower(user: User, r: int, k: int) -> User:
    """The same user cut to its first r directions of its first k components (a user trained with r' <= r, K' <= K)."""
    coeffs = {key: (v[:r, :k] if key.endswith(names.COEFF_A) else v[:k, :r]) for key, v in user.coefficients.items()}
    return User(user.fingerprint, coeffs, user.head, user.meta)


def _padded(user: User, r: int, k: int) -> User:
    def pad(key, v):
        want = (r, k) if key.endswith(names.COEFF_A) else (k, r)
        return np.pad(v, [(0, w - h) for w, h in zip(want, v.shape)])

    return User(user.fingerprint, {key: pad(key, v) for key, v in user.coefficients.items()}, user.head, user.meta)


def test_lower_k_and_r_users_run_like_their_zero_padded_twin(setup, bundle, tmp_path):
    from helpers.runtime import K, R

    small = _lower(random_user(setup.subspace, 6), 1, K - 1)
    small_path, twin_path = write_user(small, tmp_path / "small.npz"), write_user(_padded(small, R, K), tmp_path / "twin.npz")
    batch = {names.INPUT_IDS: np.array([[2, 7, 8, 3], [2, 9, 3, 0]]), names.ATTENTION_MASK: np.array([[1] * 4, [1, 1, 1, 0]])}
    got = run_arrays(bundle, load_user(bundle, small_path), batch)[names.LOGITS]
    np.testing.assert_array_equal(got, run_arrays(bundle, load_user(bundle, twin_path), batch)[names.LOGITS])
    assert not np.allclose(got, run_arrays(bundle, None, batch)[names.LOGITS])  # the user does act
    runs = [invoke("run", setup.bundle, "--coeffs", p, "--json", *TEXTS) for p in (small_path, twin_path)]
    assert runs[0].exit_code == 0 and json.loads(runs[0].output)["predictions"] == json.loads(runs[1].output)["predictions"]


def test_lower_rank_coeffs_export_a_bundle_that_serves_normal_users(setup, tmp_path):
    """`export --coeffs` with an r'=1 (K'=3) user on the r=2, K=4 subspace: the bundle keeps the subspace's input
    shapes, its defaults are the padded user, and a normal user loads and runs on it."""
    from helpers.runtime import K, R

    small = _lower(random_user(setup.subspace, 7), 1, K - 1)
    small_path = write_user(small, tmp_path / "small.npz")
    res = invoke("export", "--model", setup.model, "--subspace", setup.subspace_dir, "--coeffs", small_path,
                 "-o", tmp_path / "bundle")
    assert res.exit_code == 0, res.output
    exported = open_bundle(tmp_path / "bundle")
    assert exported.coeff_inputs[A0].shape == (R, K)
    batch = {names.INPUT_IDS: np.array([[2, 7, 8, 3]]), names.ATTENTION_MASK: np.ones((1, 4), np.int64)}
    reference = open_bundle(setup.bundle)
    np.testing.assert_allclose(run_arrays(exported, None, batch)[names.LOGITS],
                               run_arrays(reference, load_user(reference, small_path), batch)[names.LOGITS], atol=1e-5)
    normal = load_user(exported, setup.users[2])
    np.testing.assert_allclose(run_arrays(exported, normal, batch)[names.LOGITS],
                               run_arrays(reference, load_user(reference, setup.users[2]), batch)[names.LOGITS], atol=1e-5)
    assert_refused(invoke("run", tmp_path / "bundle", "--coeffs", setup.users[2], "--max-length", "0", "x"), "--max-length")


# ------------------------------------------------------------------------------- kind 8: outputs checked first

def test_unwritable_export_output_refused_before_the_work(setup, tmp_path, no_export_work):
    (tmp_path / "a-file").write_text("x")
    for out, words in ((tmp_path / "a-file" / "bundle", "is not a folder"),
                       (Path("/proc/edge-lorax-test/bundle"), "cannot write in /proc")):
        before = listing(tmp_path)
        res = invoke("export", "--model", setup.model, "--subspace", setup.subspace_dir, "-o", out)
        assert_refused(res, out, words)
        assert listing(tmp_path) == before


def test_published_files_honour_the_umask(setup, tmp_path):
    import os

    from edge_lorax.formats.subspace import write_subspace

    old = os.umask(0o027)
    try:
        write_subspace(setup.subspace, tmp_path / "sub")
        write_user(random_user(setup.subspace, 1), tmp_path / "u.npz")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "sub", *(tmp_path / "sub").iterdir(), tmp_path / "u.npz"]}
    assert modes == {"sub": 0o750, names.SUBSPACE_CONFIG: 0o640, names.SUBSPACE_WEIGHTS: 0o640, "u.npz": 0o640}, modes


# ------------------------------------------------------------------------------- the real case files, real bundle

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo subspace exactly as edge_lorax/demo.py builds it, and a MiniLM bundle exported with the projected
    NYT user (as the demo does); minutes of CPU."""
    from edge_lorax.builder.project import project_adapter
    from edge_lorax.builder.subspace import build_subspace
    from edge_lorax.demo import CHECKOUT_ADAPTERS, SOURCES
    from edge_lorax.export import export_bundle
    from edge_lorax.formats.subspace import write_subspace

    root = tmp_path_factory.mktemp("demo")
    sub = build_subspace([CHECKOUT_ADAPTERS / s for s in SOURCES], components=8, mean="keep")
    write_subspace(sub, root / "subspace")
    user = write_user(project_adapter(sub, CHECKOUT_ADAPTERS / "nyt-binary").coeffs, root / "nyt-projected.npz")
    export_bundle(None, root / "subspace", root / "bundle", user)
    return sub.fingerprint, root


@pytest.mark.slow
@pytest.mark.skipif(not CASES.is_dir(), reason="tests/cases/users is missing from this checkout")  # before the fixture
def test_real_cases_on_the_demo_bundle(demo, tmp_path):
    fingerprint, root = demo
    assert fingerprint == DEMO_FINGERPRINT  # the case files are bound to it
    res = invoke("run", root / "bundle", "--coeffs", CASES / "ham_spam_labels.npz", "--json", "win a free prize")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["predictions"][0]["label"] in ("ham", "spam")
    for path, words in real_cases():
        assert_refused(invoke("run", root / "bundle", "--coeffs", path, "win a free prize"), path, words)
        out = tmp_path / "bundle"
        res = invoke("export", "--subspace", root / "subspace", "--coeffs", path, "-o", out)
        assert_refused(res, path, words, target=out, before=[])
    long_text = " ".join(["word"] * 700)
    for value in ("600", "0", "-5"):
        assert_refused(invoke("run", root / "bundle", "--max-length", value, long_text), "--max-length", "512")
    huge = with_tensor(CASES / "ham_spam_labels.npz", tmp_path / "huge.npz", A0, np.full((8, 8), 3e38, np.float32))
    assert_refused(invoke("run", root / "bundle", "--coeffs", huge, "x"), huge, "3e+38")
    out = tmp_path / "huge-bundle"
    assert_refused(invoke("export", "--subspace", root / "subspace", "--coeffs", huge, "-o", out), huge, "3e+38",
                   target=out)


@pytest.mark.slow
def test_rank4_coeffs_on_the_r8_demo_subspace_export_a_bundle_for_every_user(demo, tmp_path):
    """The case `export --coeffs` with a rank-4 user on the r=8 demo subspace: the bundle keeps (8, 8) inputs and
    serves a normal r=8 user (the real ham/spam case file) with its own labels."""
    from edge_lorax.formats.user import read_user

    _, root = demo
    rank4 = write_user(_lower(read_user(root / "nyt-projected.npz"), 4, 8), tmp_path / "rank4.npz")
    res = invoke("export", "--subspace", root / "subspace", "--coeffs", rank4, "-o", tmp_path / "bundle")
    assert res.exit_code == 0, res.output
    assert open_bundle(tmp_path / "bundle").coeff_inputs[A0].shape == (8, 8)
    if CASES.is_dir():
        res = invoke("run", tmp_path / "bundle", "--coeffs", CASES / "ham_spam_labels.npz", "--json", "win a free prize")
        assert res.exit_code == 0 and json.loads(res.output)["predictions"][0]["label"] in ("ham", "spam"), res.output


def test_max_length_that_leaves_no_text_token_is_refused(setup):
    """tokenizers does not truncate at all below its special tokens' count: --max-length 1 meant no truncation."""
    from tokenizers import Tokenizer

    specials = Tokenizer.from_file(str(setup.bundle / names.TOKENIZER_FILE)).post_processor.num_special_tokens_to_add(False)
    assert specials == 2  # [CLS] ... [SEP]
    for value in ("1", "2"):
        assert_refused(invoke("run", setup.bundle, "--max-length", value, TEXTS[0]), "adds 2 special tokens",
                       "pass 3 or more")
    assert invoke("run", setup.bundle, "--max-length", "3", TEXTS[0]).exit_code == 0
