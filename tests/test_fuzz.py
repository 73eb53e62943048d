"""Property-based fuzzing of every loader: damaged files give the package's InputError, never another exception.

Each loader gets a valid file set, then Hypothesis damages one file at a time: bytes flipped, inserted, deleted,
the file truncated or replaced; JSON values swapped for values of other types, keys deleted, the document replaced.
Loaders: the adapter folder (formats.peft.read_adapter + every factor), the subspace folder (formats.subspace.
read_subspace; a damaged config is also re-fingerprinted so the checks after the fingerprint run), the user file
(formats.user.read_user and runtime.load_user, `user.npz` and `.onnx_adapter`, plus damaged __meta__ and members)
and the bundle (runtime.open_bundle on a damaged manifest.json, then predict with a damaged config.json,
tokenizer_config.json or tokenizer.json). Loading may succeed; failing any other way than InputError fails the test.
Bounded: a few dozen examples per loader, no example database, so the suite stays fast.
"""

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError

FUZZ = settings(max_examples=50, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------ mutations

_POS = st.one_of(st.integers(0, 511), st.integers(0, 1 << 30))  # often in the header, sometimes anywhere
BYTE_OPS = st.one_of(
    st.tuples(st.just("flip"), _POS, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _POS),
    st.tuples(st.just("insert"), _POS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), _POS, st.integers(1, 64)),
    st.tuples(st.just("replace"), st.binary(max_size=64)),
)
JSON_VALUES = st.sampled_from([None, True, False, 0, -1, 1, 2.5, -1e300, 10**20, "", "x", "../../etc/passwd", [], [1, "a"],
                               {}, {"a": 1}, [[[]]], float("nan")])
JSON_OPS = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 1 << 20), JSON_VALUES),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20)),
    st.tuples(st.just("whole"), JSON_VALUES),
    st.tuples(st.just("bytes"), BYTE_OPS),
)


def mutate_bytes(data: bytes, op) -> bytes:
    kind, *args = op
    at = args[0] % (len(data) + 1) if kind != "replace" else 0
    if kind == "flip" and data:
        at = args[0] % len(data)
        return data[:at] + bytes([args[1]]) + data[at + 1:]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + args[1] + data[at:]
    if kind == "delete":
        return data[:at] + data[at + args[1]:]
    return args[0] if kind == "replace" else data


def _paths(doc) -> list:
    """Every (container, key) place in a JSON document, depth first."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out.append((doc, key))
        out.extend(_paths(value))
    return out


def mutate_json(text: bytes, op) -> bytes:
    kind, *args = op
    if kind == "bytes":
        return mutate_bytes(text, args[0])
    if kind == "whole":
        return json.dumps(args[0]).encode()
    doc = json.loads(text)
    places = _paths(doc)
    if places:
        container, key = places[args[0] % len(places)]
        if kind == "set":
            container[key] = args[1]
        else:
            del container[key]
    return json.dumps(doc).encode()


def only_input_errors(call):
    """Run `call`; success or an InputError is fine, anything else fails with its traceback."""
    try:
        call()
    except InputError as e:
        assert str(e) and "\n" not in str(e).strip(), repr(str(e))


# ------------------------------------------------------------------------------------------------ adapters

@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from helpers import build_tiny_model, lora_kwargs

    path = tmp_path_factory.mktemp("fuzz") / "adapter"
    get_peft_model(build_tiny_model("bert"), LoraConfig(**lora_kwargs("bert"))).save_pretrained(path)
    return path


def _read_adapter_fully(path: Path):
    from edge_lorax.formats.peft import read_adapter, read_factors

    info = read_adapter(path)
    for module in info.modules:
        read_factors(info, module)


@FUZZ
@given(which=st.sampled_from([names.ADAPTER_CONFIG, names.ADAPTER_WEIGHTS]), json_op=JSON_OPS, byte_op=BYTE_OPS)
def test_adapter_folder(adapter_dir, which, json_op, byte_op):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapter"
        shutil.copytree(adapter_dir, folder)
        data = (folder / which).read_bytes()
        (folder / which).write_bytes(mutate_json(data, json_op) if which.endswith(".json") else mutate_bytes(data, byte_op))
        only_input_errors(lambda: _read_adapter_fully(folder))


# ------------------------------------------------------------------------------------------------ subspaces

@pytest.fixture(scope="module")
def subspace_dir(tmp_path_factory):
    from edge_lorax.formats.subspace import write_subspace
    from helpers.runtime import tiny_subspace

    return write_subspace(tiny_subspace(), tmp_path_factory.mktemp("fuzz") / "subspace")


def _refingerprint(folder: Path):
    """Give a damaged (but JSON-object) config the fingerprint of the tensors, so the later checks are reached."""
    from safetensors.numpy import load_file

    from edge_lorax.formats.subspace import fingerprint_tensors

    try:
        config = json.loads((folder / names.SUBSPACE_CONFIG).read_text())
    except ValueError:
        return
    if isinstance(config, dict):
        config["fingerprint"] = fingerprint_tensors(load_file(str(folder / names.SUBSPACE_WEIGHTS)), config)
        (folder / names.SUBSPACE_CONFIG).write_text(json.dumps(config))


@FUZZ
@given(which=st.sampled_from([names.SUBSPACE_CONFIG, names.SUBSPACE_WEIGHTS]), json_op=JSON_OPS, byte_op=BYTE_OPS,
       refingerprint=st.booleans())
def test_subspace_folder(subspace_dir, which, json_op, byte_op, refingerprint):
    from edge_lorax.formats.subspace import read_subspace

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "subspace"
        shutil.copytree(subspace_dir, folder)
        data = (folder / which).read_bytes()
        (folder / which).write_bytes(mutate_json(data, json_op) if which.endswith(".json") else mutate_bytes(data, byte_op))
        if refingerprint and which == names.SUBSPACE_CONFIG:
            _refingerprint(folder)
        only_input_errors(lambda: read_subspace(folder))


# ------------------------------------------------------------------------------------------------ user files

MEMBER_VALUES = st.sampled_from(["f64", "int", "scalar", "3d", "empty", "nan", "huge", "str", "bool", "transposed"])


def _odd(value: np.ndarray, how: str) -> np.ndarray:
    return {"f64": lambda: value.astype(np.float64), "int": lambda: value.astype(np.int64),
            "scalar": lambda: np.float32(1.0), "3d": lambda: value[None], "empty": lambda: value[:0],
            "nan": lambda: np.full_like(value, np.nan), "huge": lambda: np.full_like(value, 3e38),
            "str": lambda: np.array(["x"] * value.size), "bool": lambda: value > 0,
            "transposed": lambda: np.ascontiguousarray(value.T)}[how]()


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _damaged_user(data: bytes, kind: str, byte_op, json_op, member: int, how: str) -> bytes:
    """The user file's bytes damaged as bytes, in its __meta__ JSON, or in one member's value."""
    if kind == "bytes":
        return mutate_bytes(data, byte_op)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if kind == "meta":
        text = mutate_json(str(arrays[names.META_KEY]).encode(), json_op)
        arrays[names.META_KEY] = np.array(text.decode("utf-8", "replace"))
    else:
        key = sorted(k for k in arrays if k != names.META_KEY)[member % (len(arrays) - 1)]
        arrays[key] = _odd(arrays[key], how)
    return _npz(arrays)


@FUZZ
@given(kind=st.sampled_from(["bytes", "meta", "member"]), byte_op=BYTE_OPS, json_op=JSON_OPS,
       member=st.integers(0, 100), how=MEMBER_VALUES)
def test_user_file(setup, bundle, kind, byte_op, json_op, member, how):
    from edge_lorax.formats.user import read_user
    from edge_lorax.runtime import load_user

    data = Path(setup.users[1]).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "user.npz"
        path.write_bytes(_damaged_user(data, kind, byte_op, json_op, member, how))
        only_input_errors(lambda: read_user(path))
        only_input_errors(lambda: load_user(bundle, path))


@FUZZ
@given(byte_op=BYTE_OPS)
def test_onnx_adapter_file(setup, bundle, byte_op):
    from edge_lorax.runtime import load_user

    data = (setup.bundle / f"user0{names.ADAPTER_SUFFIX}").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"user{names.ADAPTER_SUFFIX}"
        path.write_bytes(mutate_bytes(data, byte_op))
        only_input_errors(lambda: load_user(bundle, path))


# ------------------------------------------------------------------------------------------------ bundles

BUNDLE_FILES = [names.BUNDLE_MANIFEST, names.BUNDLE_CONFIG, "tokenizer_config.json", names.TOKENIZER_FILE]


def _serve(folder: Path, user_path: Path):
    from edge_lorax.runtime import load_user, open_bundle, predict

    bundle = open_bundle(folder)
    predict(bundle, None, ["the movie was great", "bad"])
    predict(bundle, load_user(bundle, user_path), ["good fun"], max_length=8)


@FUZZ
@given(which=st.sampled_from(BUNDLE_FILES), json_op=JSON_OPS)
def test_bundle(setup, which, json_op):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        for name in (names.BUNDLE_MODEL, *BUNDLE_FILES):  # the fp32 graph is all it serves
            shutil.copyfile(setup.bundle / name, folder / name)
        (folder / which).write_bytes(mutate_json((folder / which).read_bytes(), json_op))
        only_input_errors(lambda: _serve(folder, setup.users[1]))
