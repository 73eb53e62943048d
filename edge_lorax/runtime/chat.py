"""A bundle's chat template, rendered as transformers renders it, with bounded work.

The template (chat_template.jinja, else tokenizer_config.json's `chat_template`) is jinja2 run in the immutable sandbox
with trim_blocks and lstrip_blocks and the `loopcontrols` extension, `raise_exception` and the tokenizer's special
tokens as globals (transformers' `apply_chat_template`). A bundle is untrusted input, so the work is bounded: every
`range()` of one rendering shares a budget of MAX_STEPS items (jinja's sandbox caps one range at 100,000 but not two
nested ones), `*` and `**` may not build values past MAX_CHARS, and the output stops at MAX_CHARS. Each breach is one
InputError naming the template file. Does not tokenize.
"""

from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.errors import InputError
from edge_lorax.runtime.tokens import tokenizer_config

MAX_STEPS = 1_000_000  # range() items per rendering: a real template loops over a few messages
MAX_CHARS = 1_000_000  # characters of output, or of one value built by * / **


def template_source(bundle: Path) -> tuple:
    """(template source, the file it came from); InputError when the bundle has none."""
    path = Path(bundle) / names.CHAT_TEMPLATE
    if path.is_file():
        return path.read_text(), path
    source = tokenizer_config(bundle).get("chat_template")
    if not isinstance(source, str):
        raise InputError(f"{bundle}: no chat template ({names.CHAT_TEMPLATE} or {names.TOKENIZER_CONFIG}'s chat_template); "
                         "drop --chat or re-export from a model that has one")
    return source, Path(bundle) / names.TOKENIZER_CONFIG


def has_chat_template(bundle: Path) -> bool:
    """The bundle has a chat template (chat_template.jinja or tokenizer_config.json's)."""
    return (Path(bundle) / names.CHAT_TEMPLATE).is_file() or isinstance(tokenizer_config(bundle).get("chat_template"), str)


def _bounded_env(where: Path):
    """The immutable sandbox with a shared range() budget and bounded * / **; raise_exception as transformers has it."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    too_much = lambda what: InputError(f"{where}: the chat template {what}; fix the template or drop --chat")  # noqa: E731
    budget = [MAX_STEPS]

    def bounded_range(*args):
        items = range(*args)
        budget[0] -= len(items)
        if budget[0] < 0:
            raise too_much(f"loops over more than {MAX_STEPS:,} range() items")
        return items

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            size = lambda v: len(v) if isinstance(v, (str, list, tuple)) else abs(int(v)) if isinstance(v, (int, float)) else 1  # noqa: E731
            if operator == "**" and not (abs(right) <= 64 if isinstance(right, (int, float)) else False):
                raise too_much(f"raises to the power {right!r}")
            if operator == "*" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
                return left * right
            if operator == "*" and size(left) * size(right) > MAX_CHARS:
                raise too_much(f"builds a value of over {MAX_CHARS:,} items")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message: str):
        raise InputError(f"{where}: the chat template refuses this prompt ({message}); drop --chat or fix the template")

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], optimized=False)  # no constant folding
    env.globals.update(range=bounded_range, raise_exception=raise_exception)
    return env, too_much


def render_chat(bundle: Path, messages: list, special: dict, add_generation_prompt: bool = True) -> str:
    """The chat template around `messages` ([{"role", "content"}]) with the generation prompt; InputError (one line
    naming the template file) for a template that fails, refuses the messages or exceeds the work bounds."""
    from jinja2 import TemplateError

    source, where = template_source(bundle)
    env, too_much = _bounded_env(where)
    out, size = [], 0
    try:
        for piece in env.from_string(source).generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                      **special):
            size += len(piece)
            if size > MAX_CHARS:
                raise too_much(f"writes over {MAX_CHARS:,} characters")
            out.append(piece)
    except (TemplateError, TypeError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{where}: not a usable chat template ({type(e).__name__}: {str(e)[:120]}); fix it or drop "
                         "--chat") from e
    return "".join(out)
