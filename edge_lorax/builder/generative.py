"""Classification tasks as instructions for a causal LM (the decoder path, issue 12): prompts, answer-only loss
masks, and the two generative metrics.

What it does: renders a task text as a prompt (the tokenizer's chat template when it has one, its user turn listing
the label words, else the plain `Text: ...\\nAnswer:` template) whose answer is the label word (+ EOS when the
tokenizer has one); builds (input_ids, labels) pairs whose labels are -100 everywhere but the answer tokens (HF
convention); right-pads them into batches with attention masks; computes per-example answer losses; and scores a
split by exact match of the greedily generated label and by label-token log-likelihood ranking (argmax over the
labels' summed answer log-probs, EOS included).

What it does not do yet: it is not wired into the CLI (`train-lora`, `train --model smollm2`) nor into the shared
training loop (builder.loop); that is the next step. Greedy generation is a plain argmax loop, one example at a time,
without a KV cache: fine for label words of a few tokens, not for long outputs.
"""

from edge_lorax.builder.data import CLASSIFICATION
from edge_lorax.formats.errors import InputError

IGNORE = -100  # HF's ignore_index: positions that carry no loss
PLAIN_TEMPLATE = "Text: {text}\nAnswer:"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _instruction(text: str, choices) -> str:
    """The chat user turn: the text, then the answer choices when given (zero-shot models need them)."""
    return f"{text}\nAnswer with one word: {' or '.join(choices)}." if choices else f"{text}\nAnswer with one word."


def render_prompt(tokenizer, text: str, choices=()) -> str:
    """The prompt the answer follows: the chat template's user turn (listing `choices`) + generation prompt, else
    the plain template (which lists none)."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": _instruction(text, choices)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(text=text)


def _answer_text(tokenizer, label: str) -> str:
    return label if has_chat_template(tokenizer) else f" {label}"


def answer_ids(tokenizer, label: str) -> list[int]:
    """The label word's tokens, then EOS when the tokenizer has one (so generation learns to stop)."""
    ids = tokenizer(_answer_text(tokenizer, label), add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"label {label!r} encodes to no tokens; use a non-empty label word")
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if eos is not None else [])


def prompt_ids(tokenizer, text: str, choices=()) -> list[int]:
    return list(tokenizer(render_prompt(tokenizer, text, choices), add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer, text: str, label: str, max_length: int | None = None,
                choices=()) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt + answer tokens; labels are the answer tokens, IGNORE on the prompt.

    A too-long prompt is cut from the left so that the answer always survives.
    """
    prompt, answer = prompt_ids(tokenizer, text, choices), answer_ids(tokenizer, label)
    if max_length is not None:
        if len(answer) >= max_length:
            raise InputError(f"label {label!r} needs {len(answer)} tokens; raise --max-length above that")
        prompt = prompt[max(0, len(prompt) + len(answer) - max_length):]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def collate(pairs, pad_id: int) -> dict:
    """Right-padded batch: input_ids, attention_mask, labels (IGNORE on padding), all (B, T) int64."""
    import torch

    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)  # (B, T)
    for row, (ids, lab) in enumerate(pairs):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(lab)] = torch.tensor(lab)
        mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pad_id(tokenizer) -> int:
    """The pad token, else EOS (decoders often have no pad token); padding is masked out either way."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InputError("the tokenizer has neither a pad nor an EOS token; add a pad_token to tokenizer_config.json")
    return pad


def task_pairs(tokenizer, task, split: str = "train", max_length: int | None = None) -> list:
    """Every example of a classification split as an (input_ids, labels) pair, the label word as the answer."""
    if task.kind != CLASSIFICATION:
        raise InputError(f"task {task.name!r} is {task.kind}; the generative path takes classification tasks only")
    part = task.split(split)
    return [encode_pair(tokenizer, text, task.labels[int(t)], max_length, task.labels)
            for text, t in zip(part.texts, part.targets)]


def answer_logprobs(model, batch: dict):
    """Per-token log-prob of each next token, IGNORE positions zeroed: (B, T-1), and the answer mask (B, T-1)."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return picked * keep, keep


def answer_losses(model, batch: dict):
    """Per-example mean cross-entropy over the answer tokens: (B,)."""
    picked, keep = answer_logprobs(model, batch)
    return -picked.sum(-1) / keep.sum(-1).clamp(min=1)


def answer_loss(model, batch: dict):
    """The batch loss: mean over all answer tokens of the batch (HF's causal-LM loss with IGNORE labels)."""
    picked, keep = answer_logprobs(model, batch)
    return -picked.sum() / keep.sum().clamp(min=1)


def label_scores(model, tokenizer, text: str, labels):
    """Summed log-likelihood of each label's answer tokens given the prompt: (L,)."""
    import torch

    with torch.no_grad():
        batch = collate([encode_pair(tokenizer, text, label, choices=labels) for label in labels], pad_id(tokenizer))
        picked, _ = answer_logprobs(model, batch)
    return picked.sum(-1)  # (L,)


def rank_predictions(model, tokenizer, texts, labels) -> list[int]:
    """The label index with the highest answer log-likelihood, per text."""
    return [int(label_scores(model, tokenizer, text, labels).argmax()) for text in texts]


def greedy_answer(model, tokenizer, text: str, max_new_tokens: int, choices=()) -> str:
    """Greedy decoding after the prompt until EOS or max_new_tokens; the decoded answer, stripped."""
    import torch

    ids = torch.tensor([prompt_ids(tokenizer, text, choices)])  # (1, T)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)  # (1, T+1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def exact_match(answer: str, label: str) -> bool:
    """Case-insensitive equality of the stripped answer and the label word."""
    return answer.strip().lower() == label.strip().lower()


def evaluate_generative(model, tokenizer, task, split: str = "validation") -> dict:
    """{"exact_match", "rank_accuracy"} over a classification split (greedy answers; label log-likelihood argmax)."""
    part = task.split(split)
    if len(part) == 0:
        raise InputError(f"task {task.name!r} has no {split} examples; give a {split} file or split fractions")
    budget = max(len(answer_ids(tokenizer, label)) for label in task.labels)
    targets = [int(t) for t in part.targets]
    answers = [greedy_answer(model, tokenizer, text, budget, task.labels) for text in part.texts]
    ranked = rank_predictions(model, tokenizer, part.texts, task.labels)
    exact = sum(exact_match(a, task.labels[t]) for a, t in zip(answers, targets))
    rank = sum(p == t for p, t in zip(ranked, targets))
    return {"exact_match": exact / len(targets), "rank_accuracy": rank / len(targets)}
