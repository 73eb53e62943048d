"""Decoder personalisation on the device (issue 28), on the tiny random Llama of helpers.decoder:

- the decoder gradient graph (export.decoder_gradient, written by `export` by default): loss and every coefficient
  gradient equal to torch autograd at several batch / sequence / answer widths, left padding included; a graph with
  one gradient deliberately broken is refused by the export's check; the manifest records it; --no-gradient leaves it out
- the torch-free fitter (runtime.personalize_llm): a planted task whose right coefficients are known (a teacher user's
  greedy answers) is learned back; `personalize` on a decoder bundle writes a user that `generate` and `reconstruct`
  take, with torch blocked; a fit no better than the start writes the start
- the local data readers (runtime.local_data): chat, prompt/completion, task CSV and plain text loss masks; every
  malformed case refused in one line naming the file and the row, nothing written
One model builder run + one gradient export (~1-2 min on two busy cores).
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from edge_lorax.export import decoder_gradient as dg
from edge_lorax.formats.bundle import read_manifest
from edge_lorax.formats.subspace import read_subspace
from edge_lorax.formats.user import read_user
from helpers.decoder import run

og = pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def gbundle(decoder_bundle, tmp_path_factory):
    """(root, model, bundle with model.grad.onnx): the shared tiny decoder re-exported with --gradient."""
    root, model = decoder_bundle
    out = tmp_path_factory.mktemp("gradbundle") / "bundle"
    run("export", "--model", model, "--subspace", root / "sub", "--coeffs", root / "u3.npz", "-o", out, "--gradient")
    return root, model, out


@pytest.fixture(scope="module")
def net(gbundle):
    root, model, _ = gbundle
    return dg.load_injected(model, read_subspace(root / "sub"), read_user(root / "u3.npz").inputs())


# ------------------------------------------------------------------------------------------------ gradient graph

def test_manifest_records_the_gradient_graph(gbundle):
    _, _, bundle = gbundle
    manifest = read_manifest(bundle)
    entry = manifest["gradient"]
    assert manifest["files"]["gradient"] == "model.grad.onnx" and (bundle / "model.grad.onnx.data").is_file()
    assert entry["loss"] == "causal_lm" and entry["ignore_index"] == -100 and entry["base_precision"] == "fp32"
    assert entry["check"]["max_rel_diff"] <= 1e-5 and entry["check"]["feed_sets"] == 2
    inputs = {i.name for i in onnx.load(str(bundle / "model.grad.onnx"), load_external_data=False).graph.input}
    assert inputs >= {"input_ids", "attention_mask", "labels", *manifest["coefficients"]}


@pytest.mark.parametrize("batch, seq, width, pad", [(1, 5, 5, 0), (2, 12, 5, 2), (3, 20, 20, 7), (4, 30, 3, 9)])
def test_gradient_graph_equals_torch_autograd(gbundle, net, batch, seq, width, pad):
    root, _, bundle = gbundle
    tokens = dg.sample_batch(80, batch, seq, width, seed=batch)
    tokens["attention_mask"][:] = 1
    tokens["attention_mask"][-1, :pad] = 0  # left padding, no loss on padded positions
    tokens["labels"][-1, :max(0, pad - (seq - width))] = -100
    check = dg.check_decoder_gradient(bundle / "model.grad.onnx", net, read_user(root / "u3.npz").inputs(), tokens)
    assert check["max_rel_diff"] <= 1e-5


def _break_one_gradient(src, dst):
    """A copy of the graph whose first coefficient gradient is scaled by 1.01 (a wrong backward)."""
    proto = onnx.load(str(src), load_external_data=False)
    out = next(o for o in proto.graph.output if o.name.startswith("grad."))
    for node in proto.graph.node:
        node.output[:] = [o + "/raw" if o == out.name else o for o in node.output]
        node.input[:] = [i + "/raw" if i == out.name else i for i in node.input]
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.01, np.float32), "broken/scale"))
    proto.graph.node.append(helper.make_node("Mul", [out.name + "/raw", "broken/scale"], [out.name]))
    onnx.save_model(proto, str(dst))


def test_a_broken_gradient_graph_is_caught(gbundle, net, tmp_path):
    root, _, bundle = gbundle
    for name in ("model.grad.onnx.data",):
        shutil.copyfile(bundle / name, tmp_path / name)
    _break_one_gradient(bundle / "model.grad.onnx", tmp_path / "model.grad.onnx")
    with pytest.raises(RuntimeError, match="differs from torch autograd"):
        dg.check_decoder_gradient(tmp_path / "model.grad.onnx", net, read_user(root / "u3.npz").inputs(),
                                  dg.sample_batch(80))


def test_no_gradient_leaves_it_out(decoder_bundle):
    manifest = read_manifest(decoder_bundle[0] / "bundle")  # helpers.decoder exports with --no-gradient
    assert "gradient" not in manifest and "gradient" not in manifest["files"]


# ------------------------------------------------------------------------------------------------ the fitter

def _teacher_examples(bundle, teacher, n: int = 96, seed: int = 0) -> list:
    """Random 6-word prompts and the teacher user's 6 greedy tokens (onnxruntime-genai), loss on those."""
    from edge_lorax.runtime.llm import load_llm
    from edge_lorax.runtime.local_data import Example

    llm = load_llm(bundle)
    llm.add_user("teacher", teacher)
    rng, out = np.random.default_rng(seed), []
    for i in range(n):
        prompt = " ".join(f"w{j}" for j in rng.integers(0, 77, 6))
        ids, answer = llm.encode(prompt), list(llm.generate(prompt, user="teacher", max_new_tokens=6))
        out.append(Example(tuple(ids + answer), tuple([False] * len(ids) + [True] * len(answer)), i))
    return out


def _delta_w(subspace, coeffs: dict) -> dict:
    return {m: ms.components_B @ coeffs[f"{m}.coeff_B"] @ coeffs[f"{m}.coeff_A"] @ ms.components_A
            for m, ms in subspace.modules.items()}  # (out, in) each


def test_planted_teacher_is_learned_back(gbundle):
    """The teacher u0's greedy answers: fitting from the base model recovers u0's ΔW on the v projections (the
    modules the data pins down: on this random model attention is near uniform, so q's ΔW barely changes any output)
    and its answers on held-out prompts."""
    from edge_lorax.runtime import personalize_llm as pl

    root, _, bundle = gbundle
    examples = _teacher_examples(bundle, root / "u0.npz")
    fit_rows, held = examples[:72], examples[72:]
    manifest = pl.decoder_manifest(bundle)
    session, scorer = pl._session(bundle / "model.grad.onnx", 1), pl.Scorer(bundle, manifest, 1)
    start = pl.start_user(bundle, manifest, None, np.random.default_rng(0))
    fitted, steps, _ = pl.fit(session, fit_rows, start, pl.LLMFitConfig(steps=150), 0, float("inf"), lambda m: None,
                              lambda: 0.0)
    teacher, sub = read_user(root / "u0.npz").inputs(), read_subspace(root / "sub")
    want, got = _delta_w(sub, teacher), _delta_w(sub, fitted)
    errors = {m: np.linalg.norm(got[m] - want[m]) / np.linalg.norm(want[m]) for m in want if "v_proj" in m}
    assert steps == 150 and max(errors.values()) < 0.35, errors
    before, after = scorer.score(held, start), scorer.score(held, fitted)
    assert after["loss"] < before["loss"] and after["exact_match"] > before["exact_match"]
    assert after["loss"] - scorer.score(held, teacher)["loss"] < 0.3 * (before["loss"] - after["loss"])


def test_minibatch_chunks_give_the_same_gradient(gbundle):
    """micro_batch only bounds memory: chunks weighted by their answer tokens give the whole batch's gradient."""
    from edge_lorax.runtime import personalize_llm as pl

    root, _, bundle = gbundle
    rows = _teacher_examples(bundle, root / "u0.npz", n=8, seed=3)
    session, coeffs = pl._session(bundle / "model.grad.onnx", 1), read_user(root / "u3.npz").inputs()
    whole, chunks = pl.gradients(session, rows, coeffs, 0, 8), pl.gradients(session, rows, coeffs, 0, 3)
    assert abs(whole[0] - chunks[0]) < 1e-5
    assert max(float(np.abs(whole[1][k] - chunks[1][k]).max()) for k in coeffs) < 1e-5


def test_lean_gradient_session_gives_the_default_session_gradients(gbundle):
    """gradient_session (no constant folding, prepacking or arena: the weights held once) changes memory, not values:
    loss and every gradient as ORT's default session gives them (<= 1e-5 relative), and they move with the user."""
    from edge_lorax.runtime import personalize_llm as pl

    root, _, bundle = gbundle
    rows = _teacher_examples(bundle, root / "u0.npz", n=4, seed=5)
    path, coeffs = bundle / "model.grad.onnx", read_user(root / "u3.npz").inputs()
    lean, plain = (pl.gradients(s, rows, coeffs, 0, 2) for s in (pl.gradient_session(path), pl._session(path, 1)))
    other = pl.gradients(pl.gradient_session(path), rows, read_user(root / "u0.npz").inputs(), 0, 2)
    assert abs(lean[0] - plain[0]) <= 1e-5 * abs(plain[0]) and abs(other[0] - plain[0]) > 1e-3
    for k in coeffs:
        assert float(np.abs(lean[1][k] - plain[1][k]).max()) <= 1e-5 * float(np.abs(plain[1][k]).max()) + 1e-9


def test_host_train_loss_equals_the_gradient_graph_loss_on_plain_text(gbundle, net, tmp_path):
    """`train --data notes.txt`'s objective (builder.token_examples, examples read by the CLI with the model folder's
    tokenizer) and the device's gradient graph (examples read from the bundle) give the same loss on a batch."""
    import torch

    from edge_lorax.builder.token_examples import token_nll
    from edge_lorax.cli import _token_task
    from edge_lorax.runtime import personalize_llm as pl
    from edge_lorax.runtime.local_data import read_local_data

    root, model, bundle = gbundle
    notes = tmp_path / "notes.txt"
    notes.write_text("".join(" ".join(f"w{(i * j) % 70 + 3}" for j in range(3 + i % 11)) + "\n" for i in range(20)))
    task, objective = _token_task(str(notes), model, None, 10, 0)
    fit, _ = pl.split_rows(read_local_data(notes, bundle, *pl._token_ids(read_manifest(bundle))[:1], 10, 64), 0.2, 0)
    with torch.no_grad():
        total, count = token_nll(net, list(task.train[:6]), objective.pad)
    device, _ = pl.gradients(pl._session(bundle / "model.grad.onnx", 1), fit[:6], read_user(root / "u3.npz").inputs(),
                             objective.pad, 6)
    assert count == pl.answer_tokens(fit[:6]) and abs(float(total) / count - device) < 1e-5 * device


CHATS = [{"messages": [{"role": "system", "content": "w2"}, {"role": "user", "content": f"w{i} w{i + 1}"},
                       {"role": "assistant", "content": f"w{(i * 7) % 70} w{i % 9}"}]} for i in range(3, 23)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BLOCKED = ("torch", "transformers", "peft", "onnx", "onnxscript", "safetensors")


def test_personalize_cli_torch_blocked_then_generate(gbundle, tmp_path):
    root, model, bundle = gbundle
    data, out = _jsonl(tmp_path / "chats.jsonl", CHATS), tmp_path / "me.npz"
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)
    for argv in (["personalize", str(bundle), "--data", str(data), "-o", str(out), "--steps", "6", "--threads", "1",
                  "--json"], ["generate", str(bundle), "--coeffs", str(out), "--json", "--max-new-tokens", "4", "w5"]):
        body = f"from edge_lorax.cli import main\nsys.argv = ['edge-lorax', *{argv!r}]\nmain()\n"
        proc = subprocess.run([sys.executable, "-c", prelude + body], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if argv[0] == "personalize":
            report = json.loads(proc.stdout)
            assert report["kind"] == "chat" and report["steps"] == 6 and report["fit_rows"] + report["heldout_rows"] == 20
            assert "step 6/6" in proc.stderr and "held-out loss" in proc.stderr
        else:
            row = json.loads(proc.stdout)
    user = read_user(out)
    assert user.fingerprint == read_manifest(bundle)["fingerprint"] and not user.head
    run("reconstruct", root / "sub", out, "-o", tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    run("export", "--model", model, "--subspace", root / "sub", "--coeffs", out, "-o", tmp_path / "mine")  # its default
    assert json.loads(run("generate", tmp_path / "mine", "--json", "--max-new-tokens", 4, "w5").stdout)["tokens"] == row["tokens"]


def test_a_fit_no_better_than_the_start_writes_the_start(gbundle, tmp_path):
    root, _, bundle = gbundle
    data, out = _jsonl(tmp_path / "chats.jsonl", CHATS), tmp_path / "same.npz"
    result = run("personalize", bundle, "--data", data, "-o", out, "--steps", 0, "--init", root / "u0.npz", "--json")
    assert json.loads(result.stdout)["kept"] is False
    start, written = read_user(root / "u0.npz").inputs(), read_user(out).inputs()
    assert all(np.array_equal(start[k], written[k]) for k in start)


# ------------------------------------------------------------------------------------------------ local data

def _read(bundle, path, max_length: int = 64):
    from edge_lorax.runtime.local_data import read_local_data

    return read_local_data(path, bundle, 2, max_length, 64)


def _answers(bundle, examples) -> list:
    from edge_lorax.runtime.tokens import load_tokenizer

    tok = load_tokenizer(bundle)
    return [tok.decode([t for t, keep in zip(e.ids, e.loss) if keep], skip_special_tokens=False) for e in examples]


def test_chat_loss_on_assistant_turns(gbundle, tmp_path):
    bundle = gbundle[2]
    two_turns = {"messages": CHATS[0]["messages"] + [{"role": "user", "content": "w9"},
                                                    {"role": "assistant", "content": "w40"}]}
    data = _read(bundle, _jsonl(tmp_path / "c.jsonl", CHATS[:9] + [two_turns]))
    assert data.kind == "chat" and len(data.examples) == 10
    assert _answers(bundle, data.examples)[:2] == ["w21 w3", "w28 w4"]  # the assistant contents (template: "... ")
    assert _answers(bundle, data.examples)[-1] == "w21 w3 w40"


def test_completion_task_and_text_masks(gbundle, decoder_bundle, tmp_path):
    from edge_lorax.builder.generative import Generation
    from edge_lorax.builder.models import load_tokenizer
    from edge_lorax.formats.tasks import read_task

    bundle, model = gbundle[2], decoder_bundle[1]
    rows = [{"prompt": f"w{i} w{i + 2}", "completion": f"w{i + 5}"} for i in range(10)]
    data = _read(bundle, _jsonl(tmp_path / "p.jsonl", rows))
    assert data.kind == "completion" and _answers(bundle, data.examples)[0] == "w5 </s>"
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"w{i} w{i + 1} w{i + 2},{'w8' if i % 2 else 'w9'}\n" for i in range(12)))
    task = _read(bundle, csv, max_length=14)  # the host's rule: a text too long is cut at its end
    host = Generation(read_task(csv, fractions=(1.0, 0.0, 0.0)), load_tokenizer(model), 14)
    encoded = host.encode(read_task(csv, fractions=(1.0, 0.0, 0.0)).train)
    assert [list(e.ids) for e in task.examples] == [list(p) + host.answers[int(y)]
                                                    for p, y in zip(encoded.prompts, encoded.targets)]
    text = tmp_path / "notes.txt"
    text.write_text("w3 w4 w5\nw6 w7\n\n" + "\n\n".join(f"w{i} w{i}" for i in range(8)) + "\n")
    docs = _read(bundle, text)
    assert docs.kind == "text" and len(docs.examples) == 9 and docs.examples[0].row == 1
    assert docs.examples[0].loss == (False,) + (True,) * (len(docs.examples[0].ids) - 1)


MALFORMED = {
    "not JSON": ("x.jsonl", '{"messages": [}\n', "row 1: not JSON"),
    "not an object": ("x.jsonl", "[1, 2]\n", "row 1: a JSON list"),
    "nested too deeply": ("x.jsonl", '{"prompt": ' + "[" * 100_000 + "}\n", "row 1: not JSON (nested too deeply)"),
    "unknown keys": ("x.jsonl", '{"question": "w3"}\n', "match no known formats"),
    "two formats": ("x.jsonl", json.dumps(CHATS[0]) + '\n{"prompt": "w3", "completion": "w4"}\n', "row 2: a different format"),
    "unknown role": ("x.jsonl", json.dumps({"messages": [{"role": "bot", "content": "w3"}]}) + "\n", "role 'bot'"),
    "message shape": ("x.jsonl", json.dumps({"messages": [{"role": "user"}]}) + "\n", "message 1 is not"),
    "no assistant": ("x.jsonl", json.dumps({"messages": [{"role": "user", "content": "w3"}]}) + "\n", "no assistant turn"),
    "empty answer": ("x.jsonl", json.dumps({"messages": [{"role": "user", "content": "w3"},
                                                         {"role": "assistant", "content": " "}]}) + "\n", "empty assistant"),
    "empty completion": ("x.jsonl", '{"prompt": "w3", "completion": ""}\n', 'an empty "completion"'),
    "completion not text": ("x.jsonl", '{"prompt": "w3", "completion": 4}\n', "must be strings"),
    "too long": ("x.jsonl", json.dumps({"prompt": " ".join(["w3"] * 70), "completion": "w4"}) + "\n",
                 "tokens, more than --max-length"),
    "too few": ("x.jsonl", "".join(json.dumps(c) + "\n" for c in CHATS[:3]), "3 examples; fitting needs at least"),
    "not UTF-8": ("x.txt", b"w3 \xff w4\n", "not UTF-8"),
    "unknown suffix": ("x.parquet", "w3\n", "is not a known data format"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_data_refused_in_one_line(gbundle, tmp_path, case):
    name, content, expected = MALFORMED[case]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run("personalize", gbundle[2], "--data", path, "-o", tmp_path / "me.npz", "--steps", 1, ok=False)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and expected in lines[0] and str(path) in lines[0], result.output
    assert not (tmp_path / "me.npz").exists()


def test_context_and_bundle_refusals(gbundle, decoder_bundle, tmp_path):
    data = _jsonl(tmp_path / "c.jsonl", CHATS)
    cases = [(["--max-length", 100], "beyond the bundle's context (64)"), (["--variant", "int8"], "--variant does not apply")]
    for extra, expected in cases:
        result = run("personalize", gbundle[2], "--data", data, "-o", tmp_path / "me.npz", *extra, ok=False)
        assert result.exit_code != 0 and expected in result.output
    result = run("personalize", decoder_bundle[0] / "bundle", "--data", data, "-o", tmp_path / "me.npz", ok=False)
    assert "ships no gradient graph" in result.output and not (tmp_path / "me.npz").exists()


# ------------------------------------------------------------------------------------------------ demo --llm
def test_demo_on_device_user_beside_projected(gbundle, tmp_path):
    """demo --llm's on-device step on the tiny bundle: a user fitted from a task CSV of local examples, then asked
    beside a projected user on one model, with the base model's answers as its before."""
    from edge_lorax.demo_llm import DEVICE, _swap_users, personalize_on_device

    root, _, bundle = gbundle
    csv = tmp_path / "local.csv"
    csv.write_text("text,label\n" + "".join(f"w{i} w{i + 1} w{i + 2},{'w8' if i % 2 else 'w9'}\n" for i in range(24)))
    fit = personalize_on_device(bundle, csv, tmp_path / "me.npz", steps=4)
    assert fit["examples"] == 24 and fit["steps"] == 4 and isinstance(fit["kept"], bool)
    assert read_user(tmp_path / "me.npz").fingerprint == read_manifest(bundle)["fingerprint"]
    prompts = {"u0": [("w3 w4 w5", ("w8", "w9"))], DEVICE: [("w6 w7 w8", ("w8", "w9")), ("w9 w10 w11", ("w8", "w9"))]}
    result = _swap_users(bundle, {"u0": root / "u0.npz", DEVICE: tmp_path / "me.npz"}, prompts)
    assert list(result["answers"]) == ["u0", DEVICE] and len(result["before"]) == 2
    from edge_lorax.runtime.llm import load_llm

    llm = load_llm(bundle)  # after = the fitted user's own greedy answer, before = the base model's
    llm.add_user("me", tmp_path / "me.npz")
    ask = lambda user, rows: [(t, llm.decode(list(llm.generate(t, user, 8, choices=c)))) for t, c in rows]  # noqa: E731
    assert result["answers"][DEVICE] == ask("me", prompts[DEVICE]) and result["before"] == ask(None, prompts[DEVICE])
    assert set(result["free_generation"]) == {"u0", DEVICE}
