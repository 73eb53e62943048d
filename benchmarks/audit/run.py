"""Issue 25 audit: causes 1, 2, 4 and 5 on the decoder runtime, generate, user files, publishing and export
combinations, run against one checkout and classified case by case.

    git worktree add /tmp/audit-before 79a785f && git worktree add /tmp/audit-after HEAD
    nice -n 10 .venv/bin/python benchmarks/audit/run.py --tree /tmp/audit-before -o benchmarks/audit/report-before.json  # ~9 min
    nice -n 10 .venv/bin/python benchmarks/audit/run.py --tree /tmp/audit-after -o benchmarks/audit/report-after.json    # ~2.5 min
    .venv/bin/python benchmarks/audit/report.py benchmarks/audit/report-before.json benchmarks/audit/report-after.json
    git worktree remove /tmp/audit-before && git worktree remove /tmp/audit-after

The tree's `edge_lorax` is put first on PYTHONPATH; the interpreter is the one running this script (the project's
.venv), so both trees run on the same packages. Inputs are prepared once per run with the tree's own CLI: a tiny
random Llama decoder bundle (as tests/helpers/decoder.py `tiny_decoder_bundle` builds it: 2 layers, GQA, an 80-word
vocabulary, four random LoRAs, a K=3 subspace, users u3 (the bundle's default) and u0) and a tiny random BERT encoder
bundle (a classification export of a K=4 subspace, with a word-piece tokenizer so `run` / `personalize` work). The
models and adapters themselves are made with torch + peft here, not by the tree (no product code involved). The bad
inputs (edited bundle copies, forged user files and adapters) are crafted from those outputs with numpy and
onnxruntime only.

Each case runs `python -m edge_lorax ...` as a subprocess in its own folder, single-threaded (OMP_NUM_THREADS=1), with
TMPDIR set to an empty folder and a timeout, and is classified:

- clean: exit 1 (or click's usage exit 2), exactly one `Error:` line on stderr (other stderr lines are progress), no
  traceback, the case's expected phrase in that line, nothing left behind;
- ok: a case where acceptance is right (exit 0, no traceback, nothing left behind);
- traceback: a Python traceback on stdout or stderr;
- accepted-wrongly: exit 0 where a refusal is right;
- hang: still running at the timeout (killed with its process group);
- leftover: files left in TMPDIR or in the case's folder (outputs of a refused run, a killed run's temp files);
- wrong-fix: one `Error:` line that does not hold the expected phrase;
- not-one-line: a refusal without a traceback but with zero or several `Error:` lines;
- refused-wrongly: a refusal where acceptance is right;
- crash: killed by a signal or another exit status;
- n/a: the case could not be set up on this tree (the reason is recorded).

The JSON report holds, per case: name, cause, surface, command, expected, verdict, exit code(s), seconds, the first
stderr line, the Error: line, leftovers.
"""

import argparse
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROMPT = "w3 w4 w5"
CHAT_OK = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w1{% endif %}"
WORDS = ["<pad>", "<unk>", "</s>"] + [f"w{i}" for i in range(77)]  # vocab 80, as tests/helpers/decoder.py
BERT_WORDS = ["good", "bad", "great", "awful", "movie", "film", "the", "a", "was", "is", "not", "very", "i", "it",
              "love", "hate", "plot", "acting", "boring", "fun"]


# ------------------------------------------------------------------------------------------ models (torch + peft)

def make_models(root: Path) -> None:
    """tiny-llama/ (+ adapters-llama/adapter0..3) and tiny-bert/ (+ adapters-bert/adapter0..3): random, seeded."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel, WordPiece
    from transformers import AutoModel, AutoModelForCausalLM, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    transformers.logging.set_verbosity_error()
    # the decoder: as helpers.tiny.tiny_decoder_dir(hidden=64) with helpers.decoder's words and chat template
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, max_position_embeddings=64, architectures=["LlamaForCausalLM"], pad_token_id=0,
                      bos_token_id=None, eos_token_id=2)
    llama = root / "tiny-llama"
    LlamaForCausalLM(cfg).eval().save_pretrained(llama)
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token=WORDS[1]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=WORDS[0], unk_token=WORDS[1], eos_token=WORDS[2])
    fast.chat_template = CHAT_OK
    fast.save_pretrained(llama)
    # the encoder: a BertModel (architectures ["BertModel"], as helpers.tiny) with helpers.runtime's word-piece tokenizer
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz,.!?") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + BERT_WORDS + chars))}
    wp = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    torch.manual_seed(0)
    bert = root / "tiny-bert"
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=256, architectures=["BertModel"])).eval().save_pretrained(bert)
    PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                            mask_token="[MASK]").save_pretrained(bert)
    # four random LoRAs each (init_lora_weights=False), as helpers.tiny.tiny_adapters
    for model_dir, cls, targets, out in [(llama, AutoModelForCausalLM, ["q_proj", "v_proj"], root / "adapters-llama"),
                                         (bert, AutoModel, ["query", "value"], root / "adapters-bert")]:
        for i in range(4):
            torch.manual_seed(100 + i)
            peft = get_peft_model(cls.from_pretrained(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                                             init_lora_weights=False))
            peft.save_pretrained(out / f"adapter{i}")
    rng = np.random.default_rng(0)
    rows = ["text,label"] + [" ".join(rng.choice(BERT_WORDS, rng.integers(3, 8))) + f",{lab}"
                             for lab in ("yes", "no") * 40]
    (root / "local.csv").write_text("\n".join(rows) + "\n")


# ------------------------------------------------------------------------------------------ running the tree

@dataclass
class Ctx:
    tree: Path
    work: Path
    python: str
    timeout: float
    prepared: dict = field(default_factory=dict)  # input name -> path, or the reason it is missing (str starting "n/a")


def env_for(ctx: Ctx, tmpdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OMP_", "MKL_", "OPENBLAS_"))}
    env.update(PYTHONPATH=str(ctx.tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TMPDIR=str(tmpdir),
               PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1", COLUMNS="200")
    return env


def cli(ctx: Ctx, *args) -> list:
    return [ctx.python, "-m", "edge_lorax", *map(str, args)]


def prepare(ctx: Ctx) -> None:
    """Models (torch/peft), then the tree's own CLI: subspaces, users, the decoder bundle, the BERT bundles."""
    w = ctx.work
    log = open(w / "prepare.log", "w")
    tmp = w / "prepare-tmp"
    tmp.mkdir(exist_ok=True)

    def step(name: str, argv: list, needs=()) -> bool:
        missing = [n for n in needs if str(ctx.prepared.get(n, "n/a")).startswith("n/a")]
        if missing:
            ctx.prepared[name] = f"n/a: needs {', '.join(missing)}"
            return False
        start = time.perf_counter()
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.run(argv, cwd=w, env=env_for(ctx, tmp), stdout=log, stderr=subprocess.PIPE, text=True, timeout=900)
        log.write(proc.stderr + f"-> exit {proc.returncode} in {time.perf_counter() - start:.1f} s\n\n")
        log.flush()
        if proc.returncode != 0:
            last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["(no stderr)"]
            ctx.prepared[name] = f"n/a: the tree's `{' '.join(argv[3:5])}` failed: {last[0][:300]}"
            print(f"  prepare {name}: FAILED ({last[0][:200]})", flush=True)
            return False
        print(f"  prepare {name}: {time.perf_counter() - start:.1f} s", flush=True)
        return True

    start = time.perf_counter()
    subprocess.run([ctx.python, str(Path(__file__).resolve()), "_models", str(w)], check=True, env=env_for(ctx, tmp),
                   stdout=log, stderr=log, timeout=900)
    print(f"  models + adapters: {time.perf_counter() - start:.1f} s", flush=True)
    la, ba = w / "adapters-llama", w / "adapters-bert"
    for name, argv, needs in [
        ("sub", cli(ctx, "build", la / "adapter0", la / "adapter1", la / "adapter2", "-o", w / "sub", "-k", 3), ()),
        ("u3", cli(ctx, "project", w / "sub", la / "adapter3", "-o", w / "u3.npz"), ("sub",)),
        ("u0", cli(ctx, "project", w / "sub", la / "adapter0", "-o", w / "u0.npz"), ("sub",)),
        ("bundle", cli(ctx, "export", "--model", w / "tiny-llama", "--subspace", w / "sub", "--coeffs", w / "u3.npz",
                       "-o", w / "bundle"), ("sub", "u3")),
        ("bsub", cli(ctx, "build", *(ba / f"adapter{i}" for i in range(4)), "-o", w / "bsub", "-k", 4), ()),
        ("b0", cli(ctx, "project", w / "bsub", ba / "adapter0", "-o", w / "b0.npz"), ("bsub",)),
        ("bbundle", cli(ctx, "export", "--model", w / "tiny-bert", "--subspace", w / "bsub", "--task", "classification",
                        "--num-labels", 2, "--no-gradient", "-o", w / "bbundle"), ("bsub",)),
        ("pebundle", cli(ctx, "export", "--model", w / "tiny-bert", "--subspace", w / "bsub", "--task", "classification",
                         "--per-example", "--no-gradient", "-o", w / "pebundle"), ("bsub",)),
    ]:
        if step(name, argv, needs):
            ctx.prepared[name] = argv[argv.index("-o") + 1]
    for name in ("models", "local"):
        ctx.prepared[name] = w
    log.close()
    craft(ctx)


# ------------------------------------------------------------------------------------------ crafted inputs

def _read_npz_raw(path: Path) -> dict:
    """{member name without .npy: array} of a user.npz, read with numpy (no tree code)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:
                out[info.filename[:-4]] = np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
    return out


@dataclass(frozen=True)
class _Stream:
    """A member written as `head` then `zeros` zero bytes, streamed (a gigabyte member without a gigabyte in memory)."""
    head: bytes
    zeros: int


def _write_npz_raw(path: Path, members: dict) -> Path:
    """members: arrays, raw .npy bytes (a forged header / crafted payload) or _Stream (deflated zeros)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in members.items():
            if isinstance(value, _Stream):
                with zf.open(key + ".npy", "w", force_zip64=True) as f:
                    f.write(value.head)
                    chunk, left = bytes(1 << 24), value.zeros
                    while left:
                        f.write(chunk[:min(left, len(chunk))])
                        left -= min(left, len(chunk))
                continue
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, value, allow_pickle=False)
                value = buf.getvalue()
            zf.writestr(key + ".npy", value)
    return path


def _forged(shape, payload: bytes, dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + payload


def _coeff_keys(members: dict) -> list:
    return [k for k in members if k.endswith(("coeff_A", "coeff_B"))]


def _write_adapter(path: Path, arrays: dict, model_version: int, adapter_version: int) -> Path:
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(adapter_version)
    fmt.set_model_version(model_version)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
    fmt.export_adapter(str(path))
    return path


def _edited_copy(src: Path, dest: Path, name: str, edit) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    if name:
        data = json.loads((dest / name).read_text())
        edit(data)
        (dest / name).write_text(json.dumps(data, indent=1))
    return dest


def _set_chat(bundle: Path, template: str) -> Path:
    """The template in chat_template.jinja and, where the bundle has one, tokenizer_config.json's chat_template."""
    (bundle / "chat_template.jinja").write_text(template)
    tc = bundle / "tokenizer_config.json"
    if tc.is_file():
        data = json.loads(tc.read_text())
        if "chat_template" in data:
            data["chat_template"] = template
            tc.write_text(json.dumps(data))
    return bundle


def craft(ctx: Ctx) -> None:
    """Edited bundle copies and forged users / adapters (numpy + onnxruntime only); each missing input is a reason."""
    w, p = ctx.work / "crafted", ctx.prepared
    w.mkdir(exist_ok=True)

    def put(name, fn, needs):
        missing = [n for n in needs if str(p.get(n, "n/a")).startswith("n/a")]
        if missing:
            p[name] = f"n/a: needs {', '.join(missing)} ({p.get(missing[0], 'not prepared')})"
            return
        try:
            p[name] = fn()
        except Exception as e:  # a crafted input that cannot be made on this tree's outputs: the case is n/a
            p[name] = f"n/a: could not craft {name}: {type(e).__name__}: {e}"

    bundle = Path(p["bundle"]) if not str(p.get("bundle", "n/a")).startswith("n/a") else None

    def adapter_parts():
        import onnxruntime as ort

        files = sorted(bundle.glob("*.onnx_adapter"))
        if not files:
            raise FileNotFoundError(f"no .onnx_adapter in {bundle}")
        fmt = ort.AdapterFormat.read_adapter(str(files[0]))
        params = {k: v.numpy() for k, v in fmt.get_parameters().items()}
        return params, fmt.get_model_version(), fmt.get_adapter_version()

    def adapter_variant(name, change):
        def make():
            params, mv, av = adapter_parts()
            arrays, mv = change(dict(params), mv)
            return _write_adapter(w / f"{name}.onnx_adapter", arrays, mv, av)
        return make

    first = lambda d: sorted(d)[0]  # noqa: E731
    put("ad-huge", adapter_variant("huge", lambda d, mv: ({k: v * np.float32(1e30) for k, v in d.items()}, mv)), ["bundle"])
    put("ad-nan", adapter_variant("nan", lambda d, mv: ({k: np.full_like(v, np.nan) for k, v in d.items()}, mv)), ["bundle"])
    for dt in ("float16", "float64", "int32"):
        put(f"ad-{dt}", adapter_variant(dt, lambda d, mv, dt=dt: ({k: v.astype(dt) for k, v in d.items()}, mv)), ["bundle"])
    put("ad-missing", adapter_variant("missing", lambda d, mv: ({k: v for k, v in d.items() if k != first(d)}, mv)), ["bundle"])
    put("ad-shape", adapter_variant("shape", lambda d, mv: ({**d, first(d): np.zeros((7, 5), np.float32)}, mv)), ["bundle"])
    put("ad-otherfp", adapter_variant("otherfp", lambda d, mv: (d, (mv + 12345) % (1 << 31))), ["bundle"])

    def user_variant(src, name, change):
        def make():
            members = _read_npz_raw(Path(p[src]))
            return _write_npz_raw(w / f"{name}.npz", change(members))
        return make

    def lower_k(m):
        out = dict(m)
        for k in _coeff_keys(m):
            a = m[k]
            out[k] = np.ascontiguousarray(a[:, :-1] if k.endswith("coeff_A") else a[:-1, :])
        return out

    def truncated(m):  # a header declaring (8, 1e8) float32 over 3 MB of zeros: the member is shorter than it says
        return {**m, _coeff_keys(m)[0]: _forged((8, 100_000_000), bytes(3_000_000))}

    def tail_bomb(m):  # the right shape, then 1 GB of zeros after the data (deflated to ~1 MB)
        key = _coeff_keys(m)[0]
        return {**m, key: _Stream(_forged(m[key].shape, np.ascontiguousarray(m[key]).tobytes()), 1 << 30)}

    def declared(m):  # the case: (8, 1e8) float32 zeros, complete, deflated to ~3 MB (3.2 GB inflated)
        return {**m, _coeff_keys(m)[0]: _Stream(_forged((8, 100_000_000), b""), 8 * 100_000_000 * 4)}

    def meta_bomb(m):  # __meta__ as a 0-d unicode array of 250M characters of NUL (1 GB inflated, ~1 MB deflated)
        return {**m, "__meta__": _Stream(_forged((), b"", "<U250000000"), 250_000_000 * 4)}

    for src in ("u0", "b0"):
        put(f"{src}-huge", user_variant(src, f"{src}-huge", lambda m: {k: (v * np.float32(1e30) if k in _coeff_keys(m) else v)
                                                                       for k, v in m.items()}), [src])
        put(f"{src}-declared", user_variant(src, f"{src}-declared", declared), [src])
        put(f"{src}-bomb", user_variant(src, f"{src}-bomb", tail_bomb), [src])
    put("b0-truncated", user_variant("b0", "b0-truncated", truncated), ["b0"])
    put("b0-meta-bomb", user_variant("b0", "b0-meta-bomb", meta_bomb), ["b0"])
    put("u0-float64", user_variant("u0", "u0-float64", lambda m: {k: (v.astype(np.float64) if k in _coeff_keys(m) else v)
                                                                  for k, v in m.items()}), ["u0"])
    put("u0-lowk", user_variant("u0", "u0-lowk", lower_k), ["u0"])

    # decoder bundle copies, each with one thing wrong
    def copy_with(name, file, edit):
        return lambda: _edited_copy(bundle, w / name, file, edit)

    def manifest_files(d):
        return d.get("files", {})

    outside = w / "outside"

    def make_outside():
        outside.mkdir(exist_ok=True)
        for f in bundle.iterdir():
            if f.name.startswith("model.onnx"):
                shutil.copy2(f, outside / f.name)
        return outside

    put("outside", make_outside, ["bundle"])

    def symlinked(name, member):
        def make():
            dest = _edited_copy(bundle, w / name, None, None)
            target = outside / member
            if not target.exists():
                raise FileNotFoundError(f"the bundle has no {member}")
            (dest / member).unlink()
            (dest / member).symlink_to(target)
            return dest
        return make

    put("b-symlink-model", symlinked("b-symlink-model", "model.onnx"), ["bundle", "outside"])
    put("b-symlink-data", symlinked("b-symlink-data", "model.onnx.data"), ["bundle", "outside"])
    put("b-nofp", copy_with("b-nofp", "manifest.json", lambda d: d.pop("fingerprint")), ["bundle"])
    put("b-ctx", copy_with("b-ctx", "genai_config.json", lambda d: d["model"].update(context_length=8)), ["bundle"])  # 3 + 8 tokens > 8
    put("b-type", copy_with("b-type", "genai_config.json", lambda d: d["model"].update(type="gpt2")), ["bundle"])
    put("b-type-unknown", copy_with("b-type-unknown", "genai_config.json", lambda d: d["model"].update(type="nonsense")), ["bundle"])
    put("b-eos-str", copy_with("b-eos-str", "manifest.json", lambda d: d.update(eos_token_id="2")), ["bundle"])
    put("b-eos-bool", copy_with("b-eos-bool", "manifest.json", lambda d: d.update(eos_token_id=True)), ["bundle"])
    put("b-eos-strlist", copy_with("b-eos-strlist", "manifest.json", lambda d: d.update(eos_token_id=["2"])), ["bundle"])
    put("b-dotdot", copy_with("b-dotdot", "manifest.json", lambda d: manifest_files(d).update(model="../outside/model.onnx")),
        ["bundle", "outside"])
    put("b-abspath", copy_with("b-abspath", "manifest.json", lambda d: manifest_files(d).update(model=str(outside / "model.onnx"))),
        ["bundle", "outside"])

    def no_genai():
        dest = _edited_copy(bundle, w / "b-nogenai", None, None)
        (dest / "genai_config.json").unlink()
        return dest

    def bad_manifest():
        dest = _edited_copy(bundle, w / "b-badjson", None, None)
        (dest / "manifest.json").write_text('{"kind": "edge-lorax-bundle", ')
        return dest

    put("b-nogenai", no_genai, ["bundle"])
    put("b-badjson", bad_manifest, ["bundle"])
    for name, template in [("chat-loops", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
                           ("chat-mul", "{{ 'x' * 100000000 }}"),
                           ("chat-pow", "{{ 10 ** 100000000 }}"),
                           ("chat-output", "{% for i in range(99999) %}{{ 'abcdefghijklmnopqrstuvwxyz' * 40 }}{% endfor %}")]:
        put(name, lambda name=name, template=template: _set_chat(_edited_copy(bundle, w / name, None, None), template), ["bundle"])

    # project-many where every adapter fails: a broken adapter folder and a missing path
    def broken():
        d = w / "broken-adapter"
        d.mkdir(exist_ok=True)
        (d / "adapter_config.json").write_text("[]")
        return d

    put("broken-adapter", broken, [])


# ------------------------------------------------------------------------------------------ cases

@dataclass
class Case:
    name: str
    cause: int
    surface: str
    args: list  # CLI arguments; strings "{input}" are replaced by prepared paths; "@case" = the case folder
    expected: str  # "refused" or "ok"
    phrase: str = ""  # regex the Error: line must hold (refused)
    kind: str = "cli"  # cli | race | kill
    why: str = ""


def _gen(bundle: str, *a) -> list:
    """generate on a bundle; --max-new-tokens 8 unless given: the tiny model's context is 64 tokens, and the default
    of 64 new ones is refused on both trees (79a785f checks it before loading anything, which would mask the case)."""
    return ["generate", bundle, *a, *(() if "--max-new-tokens" in a else ("--max-new-tokens", 8)), PROMPT]


def _g(*a) -> list:
    return _gen("{bundle}", *a)


R, OK = "refused", "ok"


def _cause1() -> list:
    """Cause 1: the decoder runtime makes the checks the encoder runtime makes."""
    return [
        Case("generate-adapter-values-1e30", 1, "user files", _g("--coeffs", "{ad-huge}"), R, r"values|finite|large"),
        Case("generate-adapter-nan", 1, "user files", _g("--coeffs", "{ad-nan}"), R, r"nan|finite"),
        Case("generate-npz-values-1e30", 1, "user files", _g("--coeffs", "{u0-huge}"), R, r"values|finite|large"),
        Case("run-npz-values-1e30 (encoder control)", 1, "user files", ["run", "{bbundle}", "--coeffs", "{b0-huge}", "good fun"], R,
             r"values|finite|large"),
        Case("generate-adapter-float16", 1, "user files", _g("--coeffs", "{ad-float16}"), R, r"float16"),
        Case("generate-adapter-float64", 1, "user files", _g("--coeffs", "{ad-float64}"), R, r"float64"),
        Case("generate-adapter-int32", 1, "user files", _g("--coeffs", "{ad-int32}"), R, r"int32"),
        Case("generate-npz-float64", 1, "user files", _g("--coeffs", "{u0-float64}"), R, r"float64"),
        Case("generate-adapter-missing-tensor", 1, "user files", _g("--coeffs", "{ad-missing}"), R, r"missing|lacks|no .*coeff"),
        Case("generate-adapter-wrong-shape", 1, "user files", _g("--coeffs", "{ad-shape}"), R, r"shape|\(7, 5\)"),
        Case("generate-adapter-other-subspace", 1, "user files", _g("--coeffs", "{ad-otherfp}"), R, r"subspace|fingerprint"),
        Case("generate-lower-K-user", 1, "user files", _g("--coeffs", "{u0-lowk}"), OK),
        Case("generate-user-npz (control)", 1, "user files", _g("--coeffs", "{u0}"), OK),
        Case("generate-bundle-default (control)", 1, "decoder bundle", _g(), OK),
        Case("generate-model-symlink-outside", 1, "decoder bundle", _gen("{b-symlink-model}"), R, r"outside"),
        Case("generate-data-symlink-outside", 1, "decoder bundle", _gen("{b-symlink-data}"), R, r"outside|path validation"),
        Case("generate-manifest-no-fingerprint+coeffs", 1, "decoder bundle", _gen("{b-nofp}", "--coeffs", "{u0}"), R,
             r"fingerprint"),
        Case("generate-context-length-mismatch", 1, "decoder bundle", _gen("{b-ctx}"), R, r"context_length"),
        Case("generate-genai-type-gpt2", 1, "decoder bundle", _gen("{b-type}"), R, r"model[._]type"),
        Case("generate-genai-type-unknown", 1, "decoder bundle", _gen("{b-type-unknown}"), R, r"model[._]type"),
        Case("generate-eos-string", 1, "decoder bundle", _gen("{b-eos-str}"), R, r"eos_token_id"),
        Case("generate-eos-bool", 1, "decoder bundle", _gen("{b-eos-bool}"), R, r"eos_token_id"),
        Case("generate-eos-string-list", 1, "decoder bundle", _gen("{b-eos-strlist}"), R, r"eos_token_id"),
        Case("generate-manifest-path-dotdot", 1, "decoder bundle", _gen("{b-dotdot}"), R, r"outside"),
        Case("generate-manifest-path-absolute", 1, "decoder bundle", _gen("{b-abspath}"), R, r"outside|absolute"),
        Case("generate-no-genai-config", 1, "decoder bundle", _gen("{b-nogenai}"), R, r"genai_config\.json"),
        Case("generate-manifest-not-json", 1, "decoder bundle", _gen("{b-badjson}"), R, r"manifest\.json"),
    ]


def _cause2() -> list:
    """Cause 2: bounded work before any check."""
    return [
        Case("generate-chat-nested-range", 2, "chat template", _gen("{chat-loops}", "--chat"), R, r"chat"),
        Case("generate-chat-string-times-1e8", 2, "chat template", _gen("{chat-mul}", "--chat"), R, r"chat"),
        Case("generate-chat-power", 2, "chat template", _gen("{chat-pow}", "--chat"), R, r"chat"),
        Case("generate-chat-huge-output", 2, "chat template", _gen("{chat-output}", "--chat"), R, r"chat"),
        Case("generate-threads-10000", 2, "generate options", _g("--threads", 10000), R, r"threads"),
        Case("personalize-threads-10000", 2, "generate options",
             ["personalize", "{bbundle}", "--data", "{local}/local.csv", "-o", "@case/me.npz", "--threads", 10000, "--steps", 0], OK,
             why="bounded either way: the encoder runtime caps intra-op threads at the usable cores (generate refuses instead)"),
        Case("run-declared-8x1e8", 2, "user files", ["run", "{bbundle}", "--coeffs", "{b0-declared}", "good fun"], R, r"declares|\(8, 100000000\)"),
        Case("generate-declared-8x1e8", 2, "user files", _g("--coeffs", "{u0-declared}"), R, r"declares|\(8, 100000000\)"),
        Case("export-declared-8x1e8", 2, "user files",
             ["export", "--model", "{models}/tiny-bert", "--subspace", "{bsub}", "--coeffs", "{b0-declared}", "--no-gradient",
              "-o", "@case/out"], R, r"declares|\(8, 100000000\)"),
        Case("personalize-init-truncated-8x1e8", 2, "user files",
             ["personalize", "{bbundle}", "--data", "{local}/local.csv", "-o", "@case/me.npz", "--init", "{b0-truncated}",
              "--threads", 1], R, r"declares|\(8, 100000000\)|damaged",
             why="the header declares (8, 1e8) over a 3 MB payload: shorter than it says"),
        Case("inspect-truncated-8x1e8", 2, "user files", ["inspect", "{b0-truncated}"], R, r"declares|\(8, 100000000\)|damaged"),
        Case("run-zip-bomb-tail", 2, "user files", ["run", "{bbundle}", "--coeffs", "{b0-bomb}", "good fun"], R,
             r"unpack|inflat|bytes", why="the right shape, then 1 GB of deflated zeros after the data"),
        Case("generate-zip-bomb-tail", 2, "user files", _g("--coeffs", "{u0-bomb}"), R, r"unpack|inflat|bytes",
             why="the right shape, then 1 GB of deflated zeros after the data"),
        Case("run-zip-bomb-meta", 2, "user files", ["run", "{bbundle}", "--coeffs", "{b0-meta-bomb}", "good fun"], R,
             r"__meta__|unpack|inflat|bytes", why="__meta__ declared as 250M characters (1 GB inflated, ~1 MB on disk)"),
    ]


def _cause4() -> list:
    """Cause 4: publishing."""
    return [
        Case("personalize-concurrent-same-output", 4, "publishing",
             ["personalize", "{bbundle}", "--data", "{local}/local.csv", "-o", "@case/same.npz", "--threads", 1, "--steps", 1500],
             R, r"exists|appeared|--overwrite", kind="race"),
        Case("personalize-existing-output", 4, "publishing",
             ["personalize", "{bbundle}", "--data", "{local}/local.csv", "-o", "@case/taken.npz", "--threads", 1, "--steps", 0],
             R, r"exists|--overwrite", why="taken.npz exists before the run"),
        Case("project-existing-output", 4, "publishing", ["project", "{sub}", "{models}/adapters-llama/adapter1", "-o", "@case/taken.npz"],
             R, r"exists|--overwrite", why="taken.npz exists before the run"),
        Case("project-many-all-failed", 4, "publishing",
             ["project-many", "{sub}", "{broken-adapter}", "@case/missing-adapter", "-o", "@case/users"], R, r"no adapter|failed"),
        Case("sigkill-generate-user-npz", 4, "publishing", _g("--coeffs", "{u0}", "--max-new-tokens", 32), "nothing-left", kind="kill"),
        Case("sigkill-generate-lower-K-user", 4, "publishing", _g("--coeffs", "{u0-lowk}", "--max-new-tokens", 32), "nothing-left",
             kind="kill"),
    ]


def _cause5() -> list:
    """Cause 5: options that pass validation but mean nothing."""
    return [
        Case("generate-temperature-nan", 5, "generate options", _g("--temperature", "nan"), R, r"temperature"),
        Case("generate-temperature-inf", 5, "generate options", _g("--temperature", "inf"), R, r"temperature"),
        Case("generate-top-k-1e9", 5, "generate options", _g("--top-k", 1_000_000_000, "--temperature", 1), R, r"top[-_]k"),
        Case("generate-seed-1e20", 5, "generate options", _g("--seed", 10**20, "--temperature", 1), R, r"seed"),
        Case("generate-top-p-without-temperature", 5, "generate options", _g("--top-p", 0.9), R, r"--temperature"),
        Case("generate-top-k-without-temperature", 5, "generate options", _g("--top-k", 5), R, r"--temperature"),
        Case("generate-top-p-nan", 5, "generate options", _g("--top-p", "nan", "--temperature", 1), R, r"top[-_]p"),
        Case("generate-sampling (control)", 5, "generate options", _g("--temperature", 0.7, "--top-k", 5, "--seed", 1), OK),
        Case("export-features-num-labels-3", 5, "export combinations",
             ["export", "--model", "{models}/tiny-bert", "--subspace", "{bsub}", "--task", "features", "--num-labels", 3,
              "--no-gradient", "-o", "@case/out"], R, r"--num-labels"),
        Case("export-regression-num-labels-3", 5, "export combinations",
             ["export", "--model", "{models}/tiny-bert", "--subspace", "{bsub}", "--task", "regression", "--num-labels", 3,
              "--no-gradient", "-o", "@case/out"], R, r"--num-labels"),
        Case("export-causal-lm-on-bert", 5, "export combinations",
             ["export", "--model", "{models}/tiny-bert", "--subspace", "{bsub}", "--task", "causal-lm", "-o", "@case/out"], R,
             r"causal"),
        Case("export-causal-lm-int8-on-bert", 5, "export combinations",
             ["export", "--model", "{models}/tiny-bert", "--subspace", "{bsub}", "--task", "causal-lm", "--quantize", "int8",
              "-o", "@case/out"], R, r"causal"),
        Case("run-per-example-bundle", 5, "export combinations", ["run", "{pebundle}", "good fun"], R, r"--per-example"),
        Case("personalize-per-example-bundle", 5, "export combinations",
             ["personalize", "{pebundle}", "--data", "{local}/local.csv", "-o", "@case/me.npz", "--threads", 1], R, r"--per-example"),
        Case("run-on-decoder-bundle", 5, "decoder bundle", ["run", "{bundle}", "good fun"], R, r"generate"),
        Case("generate-on-encoder-bundle", 5, "decoder bundle", _gen("{bbundle}"), R, r"KV-cache|decoder|causal"),
        Case("run-encoder-user (control)", 5, "export combinations", ["run", "{bbundle}", "--coeffs", "{b0}", "good fun"], OK),
    ]


def cases() -> list:
    return _cause1() + _cause2() + _cause4() + _cause5()


# ------------------------------------------------------------------------------------------ running and classifying

ERROR = re.compile(r"^Error:")
TRACEBACK = "Traceback (most recent call last)"


def resolve(ctx: Ctx, case: Case, folder: Path):
    """argv, or the reason the case is n/a on this tree."""
    out = []
    for a in map(str, case.args):
        if "@case" in a:
            a = a.replace("@case", str(folder))
        for key in re.findall(r"\{([^}]+)\}", a):
            value = ctx.prepared.get(key, f"n/a: {key} was not prepared")
            if str(value).startswith("n/a"):
                return None, f"{key}: {value}"
            a = a.replace("{" + key + "}", str(value))
        out.append(a)
    return cli(ctx, *out), ""


# onnxruntime's own telemetry session-id file: `import onnxruntime` writes TMPDIR/.ses (51 bytes, a fixed name, the
# same on both trees, no user data); it is not the product's leftover, so it is not counted (the report says so).
IGNORED_TMP = {".ses"}


def listing(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def tmp_listing(tmpdir: Path) -> list:
    return [f"TMPDIR/{x}" for x in listing(tmpdir) if x not in IGNORED_TMP]


def last_traceback_line(text: str) -> str:
    """The exception line that ends a traceback ('' without one)."""
    if TRACEBACK not in text:
        return ""
    tail = text[text.rindex(TRACEBACK):].splitlines()
    return next((ln.strip() for ln in tail[1:] if ln and not ln.startswith((" ", "Traceback"))), "")[:400]


def first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


LIVE: set = set()  # process groups of running cases, killed if this script is interrupted


@dataclass
class Run:
    """One case process: stdout / stderr go to files under work/logs (not the case folder, which is checked for
    leftovers); reaped with os.wait4 for its own peak RSS."""
    proc: subprocess.Popen
    out: Path
    err: Path
    t0: float


def start(ctx: Ctx, argv, folder: Path, tmpdir: Path) -> Run:
    logs = ctx.work / "logs"
    logs.mkdir(exist_ok=True)
    tag = f"{folder.name}.{time.monotonic_ns()}"
    out, err = logs / f"{tag}.out", logs / f"{tag}.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(argv, cwd=folder, env=env_for(ctx, tmpdir), stdout=fo, stderr=fe, start_new_session=True)
    LIVE.add(proc.pid)
    return Run(proc, out, err, time.perf_counter())


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap(run: Run, block: bool):
    """(exit code, peak RSS in MiB) once the process has ended, else None."""
    pid, status, usage = os.wait4(run.proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    run.proc.returncode = os.waitstatus_to_exitcode(status)
    return run.proc.returncode, usage.ru_maxrss / 1024


def finish(run: Run, timeout: float) -> dict:
    """rc (None: still running at the timeout, then killed), out, err, seconds, rss_mib."""
    try:
        while (got := reap(run, False)) is None:
            if time.perf_counter() - run.t0 > timeout:
                kill_group(run.proc.pid)
                got = (None, reap(run, True)[1])
                break
            time.sleep(0.02)
    finally:
        kill_group(run.proc.pid)  # anything the case left running in its group (none expected)
        LIVE.discard(run.proc.pid)
    secs = time.perf_counter() - run.t0
    return {"rc": got[0], "out": run.out.read_text(errors="replace"), "err": run.err.read_text(errors="replace"),
            "seconds": secs, "rss_mib": got[1]}


# A refusal should cost what starting the command costs: after more than this, it is "costly" (cause 2, bounded
# work before any check). Measured starts here: 0.2-0.4 s and 40-100 MiB (generate / run / inspect), 2-3 s and
# ~600 MiB (export, which imports torch).
COSTLY_S, COSTLY_MIB = 10.0, 1024.0


def judge(expected: str, phrase: str, rc, out: str, err: str, leftovers: list, cost=(0.0, 0.0)) -> tuple:
    """(verdict, the Error: line); cost: (seconds, peak RSS MiB)."""
    errors = [ln for ln in err.splitlines() if ERROR.match(ln)]
    line = errors[0] if errors else ""
    if rc is None:
        return "hang", line
    if TRACEBACK in err or TRACEBACK in out:
        return "traceback", line
    if expected == "ok":
        if rc != 0:
            return ("refused-wrongly" if rc in (1, 2) else "crash"), line
        return ("leftover" if leftovers else "ok"), line
    if rc == 0:
        return "accepted-wrongly", line
    if rc not in (1, 2):
        return "crash", line
    if leftovers:
        return "leftover", line
    if len(errors) != 1:
        return "not-one-line", line
    if cost[0] > COSTLY_S or cost[1] > COSTLY_MIB:
        return "costly", line
    if not re.search(phrase, line, re.IGNORECASE):
        return "wrong-fix", line
    return "clean", line


def run_case(ctx: Ctx, case: Case) -> dict:
    folder = ctx.work / "cases" / re.sub(r"[^A-Za-z0-9_.+-]+", "_", case.name)
    shutil.rmtree(folder, ignore_errors=True)
    tmpdir = folder / "tmp"
    tmpdir.mkdir(parents=True)
    argv, why_na = resolve(ctx, case, folder)
    rec = {"name": case.name, "cause": case.cause, "surface": case.surface, "kind": case.kind,
           "expected": case.expected + (f" ({case.phrase})" if case.phrase else ""), "note": case.why}
    if argv is None:
        return {**rec, "command": None, "verdict": "n/a", "why": why_na}
    rec["command"] = shlex.join(["edge-lorax", *argv[3:]])
    if case.name.endswith("existing-output"):
        shutil.copy(ctx.prepared["b0" if "personalize" in case.name else "u3"], folder / "taken.npz")
    before = set(listing(folder))
    if case.kind == "race":
        rec.update(run_race(ctx, case, argv, folder, tmpdir))
    elif case.kind == "kill":
        rec.update(run_kill(ctx, argv, folder, tmpdir))
    else:
        r = finish(start(ctx, argv, folder, tmpdir), ctx.timeout)
        time.sleep(0.2)
        left = tmp_listing(tmpdir)
        if case.expected != "ok":
            left += [x for x in listing(folder) if x not in before and not x.startswith("tmp")]
        verdict, line = judge(case.expected, case.phrase, r["rc"], r["out"], r["err"], left, (r["seconds"], r["rss_mib"]))
        rec.update(verdict=verdict, exit=r["rc"], seconds=round(r["seconds"], 2), peak_rss_mib=round(r["rss_mib"]),
                   stderr_first=first_line(r["err"])[:400], error_line=line[:400], leftovers=left[:20],
                   traceback_last=last_traceback_line(r["out"] + r["err"]), stdout_head=r["out"][:200])
    shutil.rmtree(folder, ignore_errors=True)
    return rec


def run_race(ctx: Ctx, case: Case, argv, folder: Path, tmpdir: Path) -> dict:
    """Two `personalize -o same.npz` at once, no --overwrite: one must win, the other be refused in one line."""
    runs = [start(ctx, argv, folder, tmpdir) for _ in range(2)]
    results = [finish(r, ctx.timeout) for r in runs]
    time.sleep(0.2)
    rcs = [r["rc"] for r in results]
    left = tmp_listing(tmpdir) + [x for x in listing(folder) if not x.startswith("tmp") and x != "same.npz"]
    base = {"exit": rcs, "seconds": round(max(r["seconds"] for r in results), 2), "leftovers": left[:20],
            "peak_rss_mib": round(max(r["rss_mib"] for r in results)),
            "stderr_first": " | ".join(first_line(r["err"])[:200] for r in results),
            "stderr_lines": [len(r["err"].splitlines()) for r in results]}  # progress lines: both fits ran
    if None in rcs:
        return {**base, "verdict": "hang", "error_line": ""}
    if any(TRACEBACK in r["out"] + r["err"] for r in results):
        return {**base, "verdict": "traceback", "error_line": ""}
    if rcs == [0, 0]:
        return {**base, "verdict": "accepted-wrongly", "error_line": "", "note": "both exited 0: one fit silently replaced"}
    if sorted(rcs) != [0, 1]:
        return {**base, "verdict": "refused-wrongly" if all(rc == 1 for rc in rcs) else "crash", "error_line": ""}
    loser = results[rcs.index(1)]
    verdict, line = judge(case.expected, case.phrase, loser["rc"], loser["out"], loser["err"], left)
    if verdict == "clean" and not (folder / "same.npz").is_file():
        verdict = "leftover"
    return {**base, "verdict": verdict, "error_line": line[:400]}


def run_kill(ctx: Ctx, argv, folder: Path, tmpdir: Path) -> dict:
    """generate with a user file and many prompts; SIGKILL once it writes its first token (or once a file shows up in
    TMPDIR); then nothing may be left in TMPDIR."""
    run = start(ctx, argv[:-1] + [PROMPT] * 400, folder, tmpdir)
    reason, got = "timeout", None
    try:
        while time.perf_counter() - run.t0 < ctx.timeout:
            if (got := reap(run, False)) is not None:
                reason = "exited before the kill"
                break
            if tmp_listing(tmpdir) or run.out.stat().st_size > 0:
                reason = "TMPDIR has a file" if tmp_listing(tmpdir) else "first token written"
                break
            time.sleep(0.01)
        if got is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            got = reap(run, True)
    finally:
        kill_group(run.proc.pid)
        LIVE.discard(run.proc.pid)
    secs = time.perf_counter() - run.t0
    time.sleep(0.3)
    left, err = tmp_listing(tmpdir), run.err.read_text(errors="replace")
    why = ""
    if reason == "exited before the kill":
        verdict = "traceback" if TRACEBACK in err else ("n/a" if got[0] in (0, 1) else "crash")
        why = ("generate finished before it could be killed" if got[0] == 0 else
               f"refused before generating, nothing to kill: {first_line(err)[:200]}")
    elif reason == "timeout":
        verdict = "hang"
    else:
        verdict = "leftover" if left else "clean"
    return {"verdict": verdict, "exit": got[0], "seconds": round(secs, 2), "peak_rss_mib": round(got[1]), "leftovers": left[:20],
            "stderr_first": first_line(err)[:400], "error_line": "", "killed_when": reason, "why": why}


def audit_one(ctx: Ctx, case: Case) -> dict:
    rec = run_case(ctx, case)
    said = rec.get("error_line") or rec.get("stderr_first") or rec.get("why", "")
    print(f"  [{rec['verdict']:>16}] c{case.cause} {case.name}: {said}"[:230], flush=True)
    return rec


def git_commit(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def git_dirty(tree: Path) -> list:
    """Uncommitted changes to the tree's edge_lorax/ (the audit then measures more than its commit)."""
    try:
        out = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "edge_lorax"], capture_output=True, text=True,
                             check=True).stdout
        return [ln[3:] for ln in out.splitlines()]
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ["(not a git checkout)"]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_models":
        make_models(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, required=True, help="a checkout whose edge_lorax is audited")
    ap.add_argument("-o", "--output", type=Path, required=True, help="report.json to write")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case [60]")
    ap.add_argument("--work", type=Path, help="scratch folder [a fresh temporary one, removed after]")
    ap.add_argument("--only", help="regex: run only the cases whose name matches")
    args = ap.parse_args()
    tree = args.tree.resolve()
    if not (tree / "edge_lorax" / "__init__.py").is_file():
        sys.exit(f"--tree {tree}: no edge_lorax package there")
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="edge-lorax-audit-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(tree, work, sys.executable, args.timeout)
    t0 = time.perf_counter()
    print(f"audit of {tree} ({git_commit(tree)[:10]}) in {work}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        prepare(ctx)
        records = [audit_one(ctx, case) for case in cases() if not args.only or re.search(args.only, case.name)]
    finally:
        for pid in list(LIVE):
            kill_group(pid)
    totals = {}
    for r in records:
        totals[r["verdict"]] = totals.get(r["verdict"], 0) + 1
    report = {"tree": str(tree), "commit": git_commit(tree), "uncommitted": git_dirty(tree), "python": sys.executable, "timeout_s": args.timeout,
              "machine": {"arch": platform.machine(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                          "platform": platform.platform()},
              "command": shlex.join([Path(sys.executable).name, *sys.argv]), "seconds": round(time.perf_counter() - t0, 1),
              "prepared": {k: str(v) for k, v in ctx.prepared.items()}, "totals": totals, "cases": records}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"totals: {totals} in {report['seconds']} s -> {args.output}", flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
