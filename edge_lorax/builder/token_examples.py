"""Host training of a decoder user on token examples with a loss mask: the local data `personalize` fits on the
device (chat JSONL, prompt/completion JSONL, plain text; read by runtime.local_data in the CLI) handed over as numpy
arrays, so the host trainer and the device fitter learn from identical tokens and the same loss positions.

`token_task` wraps the examples as the Task builder.loop.fit walks (fit examples as train, held-out ones as test);
`TokenLoss` is the objective: mean cross-entropy over the loss-masked tokens (HF's causal-LM loss with -100 labels),
rows left-padded with positions from the mask (builder.generative.Generation's layout, and the device gradient
graph's), only the positions from the first target on reaching the LM head; a split is scored by its mean token loss
and perplexity = exp(loss). Does not read files, tokenize or generate.
"""

import math

import numpy as np

from edge_lorax.builder.generative import IGNORE, _eval_mode, left_pad
from edge_lorax.formats.tasks import Task


def token_task(name: str, kind: str, fit: list, held: list) -> Task:
    """A Task whose splits are tuples of (ids (T,) int64, loss (T,) bool) examples: `fit` as train, `held` as test
    (scored once, after the last step), no validation split (so no early stopping)."""
    return Task(name, kind, (), tuple(fit), (), tuple(held))


def lm_batch(rows: list, pad: int) -> tuple:
    """(input_ids, attention_mask) (B, T) int64, left-padded, and targets (B, W) int64: at each of the last W
    positions the next token where it carries loss, else IGNORE (W: from the first position with a target on)."""
    import torch

    ids, mask = left_pad([list(r[0]) for r in rows], pad)  # (B, T)
    width = ids.shape[1]
    targets = torch.full_like(ids, IGNORE)  # (B, T): the token each position predicts
    for b, (row, loss) in enumerate(rows):
        nxt = np.where(np.asarray(loss[1:], bool), np.asarray(row[1:], np.int64), IGNORE)  # (n - 1,)
        targets[b, width - len(row):width - 1] = torch.from_numpy(nxt)
    first = int((targets != IGNORE).any(0).int().argmax())
    return ids, mask, targets[:, first:]


def token_nll(model, rows: list, pad: int) -> tuple:
    """(summed cross-entropy over the rows' loss tokens (a 0-d tensor), their count)."""
    import torch

    ids, mask, targets = lm_batch(rows, pad)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                   logits_to_keep=targets.shape[1]).logits  # (B, W, V)
    keep = targets != IGNORE
    logp = torch.log_softmax(logits[keep].float(), dim=-1)  # (n, V)
    return -logp.gather(-1, targets[keep].unsqueeze(-1)).sum(), int(keep.sum())


class TokenLoss:
    """builder.loop.fit's objective for token examples: loss = mean over the batch's loss tokens; evaluate ->
    {"loss": mean token loss, "perplexity": exp(loss), "tokens": count} ({} for an empty split)."""

    metric = "perplexity"

    def __init__(self, pad: int):
        self.pad = pad

    def encode(self, split) -> tuple:
        return tuple(split)

    def size(self, data: tuple) -> int:
        return len(data)

    def loss(self, model, data: tuple, index):
        total, count = token_nll(model, [data[i] for i in index], self.pad)
        return total / max(count, 1)

    def evaluate(self, model, data: tuple, batch_size: int = 32) -> dict:
        import torch

        if not data:
            return {}
        total, count = 0.0, 0
        with torch.no_grad(), _eval_mode(model):
            for start in range(0, len(data), batch_size):
                nll, n = token_nll(model, list(data[start:start + batch_size]), self.pad)
                total, count = total + float(nll), count + n
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}
