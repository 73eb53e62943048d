"""The HF-convention reference for builder.generative: (input_ids, labels) pairs with -100 on the prompt, right-padded
batches and the answer losses computed on every position's logits. builder.generative's cached and left-padded
passes are checked against these (and these against HF's own `labels=` loss)."""

from edge_lorax.builder.generative import IGNORE, answer_ids, fitted_prompt
from edge_lorax.formats.errors import InputError


def encode_pair(tokenizer, text: str, label: str, max_length: int | None = None,
                choices=()) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt + answer tokens; labels are the answer tokens, IGNORE on the prompt.

    With max_length, the text is cut at its end so that template + answer fit (InputError when they cannot).
    """
    answer = answer_ids(tokenizer, label)
    if max_length is not None and len(answer) >= max_length:
        raise InputError(f"label {label!r} needs {len(answer)} tokens; raise --max-length above that")
    prompt = fitted_prompt(tokenizer, text, choices, None if max_length is None else max_length - len(answer))
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


def answer_logprobs(model, batch: dict):
    """Per-token log-prob of each next token, IGNORE positions zeroed: (B, T-1), and the answer mask (B, T-1)."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    logp = torch.log_softmax(logits[:, :-1][keep].float(), dim=-1)  # (n, V): answer positions only
    values = logp.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)  # (n,)
    return torch.zeros(keep.shape, dtype=values.dtype).masked_scatter(keep, values), keep


def answer_losses(model, batch: dict):
    """Per-example mean cross-entropy over the answer tokens: (B,)."""
    picked, keep = answer_logprobs(model, batch)
    return -picked.sum(-1) / keep.sum(-1).clamp(min=1)


def answer_loss(model, batch: dict):
    """The batch loss: mean over all answer tokens of the batch (HF's causal-LM loss with IGNORE labels)."""
    picked, keep = answer_logprobs(model, batch)
    return -picked.sum() / keep.sum().clamp(min=1)


