"""The one bundle manifest (edge_lorax.formats.bundle): written and read back exactly, every check for every target,
version-1 manifests of both old shapes upgraded in memory. Pure JSON: no model files are needed to read a manifest."""

import json

import pytest

from edge_lorax.formats import names
from edge_lorax.formats.bundle import (
    MANIFEST_VERSION,
    TARGET_DECODER,
    TARGET_ENCODER,
    BundleError,
    make_user_inputs,
    read_manifest,
    user_input_shapes,
    write_manifest,
)

A, B = "m.layers.0.q.coeff_A", "m.layers.0.q.coeff_B"


def manifest(**extra) -> dict:
    """A small encoder-target manifest: two coefficient inputs and a head, in binding order."""
    users = make_user_inputs([(A, [8, 4], "float32"), (B, [4, 8], "float32"), (names.HEAD_BIAS, [2], "float32")])
    return {"target": TARGET_ENCODER, "fingerprint": "0123456789abcdef", "task": "classification",
            "mode": names.MODE_SHARED, "files": {"fp32": "model.onnx", "tokenizer": ["tokenizer.json"], "adapter": None},
            "inputs": [{"name": names.INPUT_IDS, "dtype": "int64", "shape": ["batch", "sequence"]}, *users],
            "user_inputs": users, "coefficients": {A: [8, 4], B: [4, 8]}, **extra}


def test_write_then_read_is_exact_and_ordered(tmp_path):
    path = write_manifest(tmp_path, manifest())
    got = read_manifest(tmp_path)
    assert got == {**manifest(), "kind": names.BUNDLE_KIND, "format_version": MANIFEST_VERSION}
    assert [u["name"] for u in got["user_inputs"]] == [A, B, names.HEAD_BIAS]  # the order a positional target binds
    first = path.read_bytes()
    write_manifest(tmp_path, manifest())
    assert path.read_bytes() == first  # same inputs, same bytes


def test_per_example_user_shapes_drop_the_batch_dim(tmp_path):
    users = make_user_inputs([(A, ["batch_size", 8, 4], "float32"), (B, ["batch_size", 4, 8], "float32")])
    write_manifest(tmp_path, manifest(mode=names.MODE_PER_EXAMPLE, user_inputs=users))
    assert user_input_shapes(read_manifest(tmp_path)) == {A: (8, 4), B: (4, 8)}


def _refused(tmp_path, edit, match):
    write_manifest(tmp_path, manifest())
    data = json.loads((tmp_path / names.BUNDLE_MANIFEST).read_text())
    edit(data)
    (tmp_path / names.BUNDLE_MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=match) as err:
        read_manifest(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(format_version=99), "format_version 99 is not one this edge-lorax reads"),
    (lambda d: d.update(format_version=True), "'format_version' is a JSON boolean, expected integer"),
    (lambda d: d.update(target="tflite"), "target 'tflite' is not an edge-lorax bundle of a known target"),
    (lambda d: d.pop("fingerprint"), "no 'fingerprint' key"),
    (lambda d: d.update(fingerprint=""), "an empty fingerprint"),
    (lambda d: d.update(files=["model.onnx"]), "'files' is a JSON array, expected object"),
    (lambda d: d["files"].update(fp32="../model.onnx"), "names '../model.onnx', outside the bundle folder"),
    (lambda d: d["files"].update(tokenizer=["/etc/passwd"]), "names '/etc/passwd', outside the bundle folder"),
    (lambda d: d["files"].update(fp32=3), "files\\['fp32'\\] holds 3, not a relative path"),
    (lambda d: d["user_inputs"].append(d["user_inputs"][0]), "user_inputs\\[3\\] is not a unique"),
    (lambda d: d.update(kv={"context_length": "2048"}), "'context_length' is a JSON string, expected integer"),
    (lambda d: d.update(kv=[]), "'kv' is a JSON array, expected object"),
    (lambda d: d.update(eos_token_id="2"), "'eos_token_id' is a JSON string, expected integer or array"),
])
def test_bad_manifests_are_one_line_refusals(tmp_path, edit, match):
    _refused(tmp_path, edit, match)


def test_a_file_linked_out_of_the_folder_is_refused(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (tmp_path / "outside.onnx").write_bytes(b"x")
    (bundle / "model.onnx").symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(ValueError, match="model.onnx: links outside the bundle folder"):
        write_manifest(bundle, manifest())  # the writer checks as the reader does
    (bundle / names.BUNDLE_MANIFEST).write_text(json.dumps({**manifest(), "kind": names.BUNDLE_KIND, "format_version": 2}))
    with pytest.raises(BundleError, match="model.onnx: links outside the bundle folder"):
        read_manifest(bundle)


def test_version_1_encoder_manifest_is_upgraded(tmp_path):
    """format_version 1, no target / user_inputs: `inputs` entries marked default are the user's, in graph order."""
    old = {k: v for k, v in manifest().items() if k not in ("target", "user_inputs")}
    (tmp_path / names.BUNDLE_MANIFEST).write_text(json.dumps({**old, "kind": names.BUNDLE_KIND, "format_version": 1}))
    got = read_manifest(tmp_path)
    assert got["target"] == TARGET_ENCODER and got["user_inputs"] == manifest()["user_inputs"]


def test_version_1_decoder_manifest_is_upgraded(tmp_path):
    """The old decoder shape: inputs as names, a kv_cache flag; user_inputs come from `coefficients`."""
    old = {k: v for k, v in manifest().items() if k not in ("target", "user_inputs")}
    old.update(kv_cache=True, task=names.TASK_CAUSAL_LM, inputs=[names.INPUT_IDS, A, B], eos_token_id=[2],
               kv={"layers": 2, "heads": 2, "head_size": 16, "context_length": 128},
               files={"model": "model.onnx", "external_data": ["model.onnx.data"], "side": [], "adapter": None})
    (tmp_path / names.BUNDLE_MANIFEST).write_text(json.dumps({**old, "kind": names.BUNDLE_KIND}))  # no version: 1
    got = read_manifest(tmp_path)
    assert got["target"] == TARGET_DECODER and [u["name"] for u in got["user_inputs"]] == [A, B]
    assert user_input_shapes(got) == {A: (8, 4), B: (4, 8)} and got["inputs"][0] == {"name": names.INPUT_IDS}


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    with pytest.raises(ValueError, match="an exporter wrote an invalid manifest"):
        write_manifest(tmp_path, manifest(target="nope"))
    assert not (tmp_path / names.BUNDLE_MANIFEST).exists()


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("kv"), "no 'kv' key"),
    (lambda d: d["kv"].pop("context_length"), "no 'kv.context_length' key"),
    (lambda d: d.pop("eos_token_id"), "no 'eos_token_id' key"),
])
def test_a_decoder_manifest_needs_what_its_runtime_reads(tmp_path, edit, match):
    data = manifest(target=TARGET_DECODER, kv={"layers": 2, "heads": 2, "head_size": 16, "context_length": 128},
                    eos_token_id=2)
    write_manifest(tmp_path, data)
    raw = json.loads((tmp_path / names.BUNDLE_MANIFEST).read_text())
    edit(raw)
    (tmp_path / names.BUNDLE_MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=match):
        read_manifest(tmp_path)
