"""The task prompt format a decoder user is trained on, defined once: the trainer (builder.generative) writes its
prompts with it and a generating runtime asks its questions with it (`edge-lorax generate --choices`).

With a chat template: one user turn, `TEXT\\nAnswer with one word: A or B.`, then the generation prompt; the answer is
the label word, then EOS. Without one: `Text: TEXT\\nAnswer:` and the answer is ` LABEL`. A user asked in another
format (a free chat prompt) answers in its base model's way, or with junk on int4. Does not tokenize.
"""

PLAIN_TEMPLATE = "Text: {text}\nAnswer:"


def instruction(text: str, choices=()) -> str:
    """The chat user turn: the text, then the answer choices when given (zero-shot models need them)."""
    return f"{text}\nAnswer with one word: {' or '.join(choices)}." if choices else f"{text}\nAnswer with one word."


def plain_prompt(text: str) -> str:
    """The prompt of a model without a chat template (it lists no choices)."""
    return PLAIN_TEMPLATE.format(text=text)
