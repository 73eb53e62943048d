"""Host `train --model DECODER --data local.(txt|jsonl)` (issue 28's free-text part) on the tiny random Llama of
helpers.decoder: the local files `personalize` fits on the device (plain text, prompt/completion JSONL, chat JSONL)
give the host trainer the very token examples, loss masks and split the device reader gives, and the same batch
tensors as the device's gradient-graph feeds; training lowers the held-out loss; a malformed file is refused in one
line naming the file and the row, nothing written. Uses the session's tiny decoder bundle (no gradient graph needed).
"""

import json

import numpy as np
import pytest

from edge_lorax.formats.bundle import read_manifest
from edge_lorax.formats.user import read_user
from helpers.decoder import run

STYLE = ["w5 w6 w7 w8 w5 w6 w7 w8 w9", "w6 w7 w8 w5 w6 w7", "w7 w8 w5 w6 w7 w8 w5 w6 w7 w8 w5 w6 w7 w8 w5 w6 w7 w8"]


def _files(tmp_path) -> dict:
    """A plain-text file (one document per line, some longer than max_length 12), a completion and a chat JSONL."""
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"{STYLE[i % 3]} w{10 + i}\n" for i in range(30)))
    completion = tmp_path / "pc.jsonl"
    completion.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 2}", "completion": f"w{i + 5} w6"}) + "\n"
                                  for i in range(20)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"w{i} w{i + 1}"},
                                                     {"role": "assistant", "content": f"w{(i * 7) % 70} w5"}]}) + "\n"
                            for i in range(3, 23)))
    return {"text": text, "completion": completion, "chat": chat}


@pytest.mark.parametrize("kind", ["text", "completion", "chat"])
def test_host_examples_and_batches_equal_the_device_readers(decoder_bundle, tmp_path, kind):
    from edge_lorax.builder.token_examples import lm_batch
    from edge_lorax.cli import _token_task
    from edge_lorax.runtime import personalize_llm as pl
    from edge_lorax.runtime.local_data import read_local_data

    root, model = decoder_bundle
    bundle, path = root / "bundle", _files(tmp_path)[kind]
    eos, pad = pl._token_ids(read_manifest(bundle))
    device = read_local_data(path, bundle, eos, 12, 64)
    assert device.kind == kind
    fit, held = pl.split_rows(device, 0.2, 3)
    task, objective = _token_task(str(path), model, None, 12, 3)
    assert task.kind == kind and objective.pad == pad
    for host_rows, device_rows in ((task.train, fit), (task.test, held)):
        assert len(host_rows) == len(device_rows) > 0
        for (ids, loss), e in zip(host_rows, device_rows):
            assert ids.dtype == np.int64 and loss.dtype == bool
            np.testing.assert_array_equal(ids, e.ids)
            np.testing.assert_array_equal(loss, e.loss)
    assert kind != "text" or any(len(e.ids) == 12 for e in device.examples)  # long documents cut into windows
    ids, mask, targets = lm_batch(list(task.train[:5]), pad)
    feeds = pl.batch_arrays(fit[:5], pad)  # what the device's gradient graph is fed
    for got, want in ((ids, "input_ids"), (mask, "attention_mask"), (targets, "labels")):
        np.testing.assert_array_equal(got.numpy(), feeds[want])


def test_host_train_on_text_lowers_the_held_out_loss(decoder_bundle, tmp_path):
    from edge_lorax.builder.models import load_causal_lm
    from edge_lorax.cli import _token_task

    root, model = decoder_bundle
    path, out = _files(tmp_path)["text"], tmp_path / "me.npz"
    result = run("train", "--model", model, "--subspace", root / "sub", "--data", path, "-o", out, "--steps", 30,
                 "--batch-size", 4, "--lr", 0.2, "--max-length", 12)
    assert "test perplexity" in result.output
    user = read_user(out)
    assert user.meta["kind"] == "text" and user.meta["task_type"] == "CAUSAL_LM" and not user.head
    assert user.fingerprint == json.loads((root / "bundle" / "manifest.json").read_text())["fingerprint"]
    task, objective = _token_task(str(path), model, None, 12, 0)
    base = objective.evaluate(load_causal_lm(model), task.test)  # the zero_b start is the base model
    assert user.meta["test"]["tokens"] == base["tokens"] > 0
    # measured 4.18 vs 4.41: a K=3 subspace of random LoRAs on a random model moves the loss a little
    assert user.meta["test"]["loss"] < 0.97 * base["loss"], (user.meta["test"], base)
    assert user.meta["test"]["perplexity"] == pytest.approx(np.exp(user.meta["test"]["loss"]), rel=1e-5)


def test_host_train_on_completions_writes_a_user_generate_takes(decoder_bundle, tmp_path):
    root, model = decoder_bundle
    out = tmp_path / "pc.npz"
    run("train", "--model", model, "--subspace", root / "sub", "--data", _files(tmp_path)["completion"], "-o", out,
        "--steps", 3, "--batch-size", 4, "--max-length", 12)
    assert read_user(out).meta["kind"] == "completion"
    result = run("generate", root / "bundle", "w3 w5", "--coeffs", out, "--max-new-tokens", 2)
    assert result.output.strip()


@pytest.mark.parametrize("name, content, expected", [
    ("bad.jsonl", '{"prompt": "w3", "completion": "w4"}\n{"prompt": "w3", "completion": ""}\n', "row 2: an empty"),
    ("bad.jsonl", json.dumps({"messages": [{"role": "user", "content": "w3"}]}) + "\n", "row 1: no assistant turn"),
    ("bad.txt", b"w3 w4\nw5 \xff\n", "not UTF-8"),
    ("few.txt", "w3 w4\nw5 w6\n", "2 examples; fitting needs at least"),
])
def test_malformed_local_data_refused_in_one_line(decoder_bundle, tmp_path, name, content, expected):
    root, model = decoder_bundle
    path, out = tmp_path / name, tmp_path / "me.npz"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run("train", "--model", model, "--subspace", root / "sub", "--data", path, "-o", out, "--steps", 2,
                 ok=False)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and expected in lines[0] and str(path) in lines[0], result.output
    assert not out.exists()


def test_an_encoder_refuses_free_text(decoder_bundle, tmp_path):
    root, _ = decoder_bundle
    result = run("train", "--subspace", root / "sub", "--data", _files(tmp_path)["text"], "-o", tmp_path / "me.npz",
                 ok=False)
    assert result.exit_code != 0 and "train a causal LM's user" in result.output and not (tmp_path / "me.npz").exists()


def test_task_files_and_data_set_names_keep_the_task_path(tmp_path):
    from edge_lorax.runtime.local_data import token_format

    task_jsonl, task_csv = tmp_path / "t.jsonl", tmp_path / "t.csv"
    task_jsonl.write_text('{"text": "w3", "label": "w4"}\n')
    task_csv.write_text("text,label\nw3,w4\n")
    files = _files(tmp_path)
    assert [token_format(p) for p in (task_jsonl, task_csv, "vader:tweets-binary", tmp_path / "none.txt")] == [None] * 4
    assert [token_format(files[k]) for k in ("text", "completion", "chat")] == ["text", "completion", "chat"]
