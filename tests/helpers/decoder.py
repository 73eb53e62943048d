"""The tiny decoder (KV-cache) bundle that tests/test_llm_bundle.py and tests/test_hf_interop.py share (conftest's
session fixture `decoder_bundle`), built through the CLI as a user would: a random 2-layer Llama (GQA: 4 heads of 16,
2 KV heads) over an 80-word vocabulary, four random LoRAs, a subspace of three, users u3 (the bundle's defaults) and
u0. One model builder run, ~15 s. Needs torch, transformers, peft and onnxruntime-genai.
"""

from pathlib import Path

from click.testing import CliRunner

from edge_lorax.cli import cli
from helpers.tiny import tiny_adapters, tiny_decoder_dir, tiny_family_dir

WORDS = ["<pad>", "<unk>", "</s>"] + [f"w{i}" for i in range(77)]  # vocab 80: no Linear of the model has 80 outputs
CHAT = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w1{% endif %}"


def run(*args, ok: bool = True):
    """`edge-lorax ARGS` in this process; ok: assert exit code 0 (the output and exception in the message). An
    `export` without --gradient / --no-gradient gets --no-gradient: the decoder gradient graph (on by default) adds
    ~40 s per export; tests/test_personalize_llm*.py ask for it."""
    args = [str(a) for a in args]
    if args[:1] == ["export"] and not {"--gradient", "--no-gradient"} & set(args):
        args.append("--no-gradient")
    result = CliRunner().invoke(cli, args)
    if ok:
        assert result.exit_code == 0, result.output + (repr(result.exception) if result.exception else "")
    return result


def tiny_decoder_bundle(root: Path) -> tuple:
    """(root, model folder): under root, tiny-llama/, adapters/, sub/ (K=3 from adapters 0-2), u3.npz and u0.npz
    (adapters 3 and 0 projected) and bundle/ (fp32, defaults u3, with u3.onnx_adapter)."""
    root = Path(root)
    model = tiny_decoder_dir(root / "tiny-llama", WORDS, hidden=64, chat_template=CHAT)
    adapters = tiny_adapters(model, "llama", root / "adapters")
    run("build", *adapters[:3], "-o", root / "sub", "-k", 3)
    run("project", root / "sub", adapters[3], "-o", root / "u3.npz")
    run("project", root / "sub", adapters[0], "-o", root / "u0.npz")
    run("export", "--model", model, "--subspace", root / "sub", "--coeffs", root / "u3.npz", "-o", root / "bundle")
    return root, model


def tiny_family_users(root: Path, model: Path, family: str, targets=None) -> Path:
    """Under root: adapters/ (four random LoRAs of `family`'s model on `targets`: a list or "all-linear"; None: the
    architectures table's default targets), sub/ (K=3 from adapters 0-2), u3.npz and u0.npz (adapters 3 and 0
    projected). Returns root."""
    from edge_lorax.builder.models import default_targets

    root = Path(root)
    adapters = tiny_adapters(model, family, root / "adapters", targets=targets or list(default_targets(model)))
    run("build", *adapters[:3], "-o", root / "sub", "-k", 3)
    run("project", root / "sub", adapters[3], "-o", root / "u3.npz")
    run("project", root / "sub", adapters[0], "-o", root / "u0.npz")
    return root


def tiny_family_bundle(root: Path, family: str, targets=None, per_example: bool = False, model: Path | None = None):
    """(root, model folder) for a tiny random `family` decoder (helpers.tiny.FAMILIES; `model` reuses a folder):
    tiny_family_users' files and bundle/ (fp32, defaults u3, with u3.onnx_adapter; --per-example if asked)."""
    root = Path(root)
    model = model or tiny_family_dir(family, root / f"tiny-{family}", WORDS, chat_template=CHAT)
    tiny_family_users(root, model, family, targets)
    run("export", "--model", model, "--subspace", root / "sub", "--coeffs", root / "u3.npz", "-o", root / "bundle",
        *(["--per-example"] if per_example else []))
    return root, model
