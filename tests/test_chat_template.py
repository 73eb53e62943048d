"""The chat template of a bundle (edge_lorax.runtime.chat): rendered as transformers renders it, and bounded — a
bundle is untrusted input, so nested loops, huge products and huge outputs are one-line refusals in bounded time."""

import time

import pytest

from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.runtime.chat import MAX_CHARS, render_chat

MESSAGES = [{"role": "user", "content": "hi"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def bundle_with(tmp_path, template: str):
    (tmp_path / names.CHAT_TEMPLATE).write_text(template)
    return tmp_path


def test_renders_like_transformers(tmp_path):
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    want = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(CHATML).render(
        messages=MESSAGES, add_generation_prompt=True)
    assert render_chat(bundle_with(tmp_path, CHATML), MESSAGES, {}) == want == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert jinja2.__version__


@pytest.mark.parametrize("template, match", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "range\\(\\) items"),
    ("{{ 'x' * 100000000 }}", "builds a value of over"),
    ("{{ ['x'] * 100000000 }}", "builds a value of over"),
    ("{% set n = 100000000 %}{{ 'x' * n }}", "builds a value of over"),
    ("{{ 10 ** 100000000 }}", "raises to the power"),
    ("{% for i in range(99999) %}{{ 'abcdefghijklmnopq' }}{% endfor %}", f"writes over {MAX_CHARS:,} characters"),
    ("{{ raise_exception('only system turns') }}", "refuses this prompt \\(only system turns\\)"),
    ("{% for %}", "not a usable chat template"),
    ("{{ messages.__class__.__mro__ }}", "not a usable chat template|^$"),
])
def test_unbounded_or_broken_templates_are_refused_fast(tmp_path, template, match):
    start = time.perf_counter()
    try:
        out = render_chat(bundle_with(tmp_path, template), MESSAGES, {})
    except InputError as e:
        assert "\n" not in str(e) and names.CHAT_TEMPLATE in str(e)
        assert __import__("re").search(match, str(e)), str(e)
    else:
        assert match.endswith("|^$") and "mro" not in out  # the sandbox hides dunder attributes: renders empty
    assert time.perf_counter() - start < 5


def test_no_template_is_one_line(tmp_path):
    with pytest.raises(InputError, match="no chat template"):
        render_chat(tmp_path, MESSAGES, {})
