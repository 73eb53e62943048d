"""Classification tasks as instructions for a causal LM (the decoder path, issue 12): prompts, answer-only loss
masks, and the two generative metrics.

What it does: renders a task text as a prompt (the tokenizer's chat template when it has one, its user turn listing
the label words, else the plain `Text: ...\\nAnswer:` template) whose answer is the label word (+ EOS when the
tokenizer has one); builds (input_ids, labels) pairs whose labels are -100 everywhere but the answer tokens (HF
convention); right-pads them into batches with attention masks; computes answer losses; and scores a split by
exact match of the greedily generated label (`accuracy`: greedy decoding yields exactly the label's tokens then EOS)
and by label-token log-likelihood ranking (`rank_accuracy`: argmax over the labels' summed answer log-probs, EOS
included). Both come from one pass: the prompt once with a KV cache, then every label's answer on the repeated
cache; greedy follows a label's path iff each of its tokens is the argmax there, so no sampling loop is needed
(`greedy_generate`, HF `generate`, decodes freely and a test checks the two agree). An answer that is a label in
other case or other tokens counts as wrong: exact means the label's own tokens.
`Generation` is the objective builder.loop.fit trains a causal LM with (PEFT's CAUSAL_LM task type).

What it does not do: regression tasks (refused), free-form generation (the answers are label words), sampling.
A text too long for --max-length is cut at its end; the template and the answer always survive.
"""

from dataclasses import dataclass

import numpy as np

from edge_lorax.builder.data import CLASSIFICATION
from edge_lorax.builder.metrics import macro_f1
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.prompts import instruction, plain_prompt

IGNORE = -100  # HF's ignore_index: positions that carry no loss
def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, text: str, choices=()) -> str:
    """The prompt the answer follows: the chat template's user turn (listing `choices`) + generation prompt, else
    the plain template (which lists none)."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": instruction(text, choices)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_prompt(text)


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


def fitted_prompt(tokenizer, text: str, choices=(), budget: int | None = None) -> list[int]:
    """The prompt's tokens, at most `budget`: a long text is cut at its end (never the template, never the answer)."""
    prompt = prompt_ids(tokenizer, text, choices)
    if budget is None or len(prompt) <= budget:
        return prompt
    overhead = len(prompt_ids(tokenizer, "", choices))
    if overhead >= budget:
        raise InputError(f"the prompt template alone needs {overhead} tokens, plus the answer's; raise --max-length "
                         f"above {overhead} + the longest label's tokens")
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = budget - overhead
    while keep > 0 and len(prompt) > budget:  # re-tokenising a cut text may shift a token or two
        prompt = prompt_ids(tokenizer, tokenizer.decode(text_ids[:keep]), choices)
        keep -= 1
    return prompt if len(prompt) <= budget else prompt_ids(tokenizer, "", choices)


def pad_id(tokenizer) -> int:
    """The pad token, else EOS (decoders often have no pad token); padding is masked out either way."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InputError("the tokenizer has neither a pad nor an EOS token; add a pad_token to tokenizer_config.json")
    return pad


def _check_classification(task):
    if task.kind != CLASSIFICATION:
        raise InputError(f"task {task.name!r} is {task.kind}; a causal LM answers with label words, so it takes "
                         "classification tasks only (pass --task-type SEQ_CLS to train a regression head instead)")


def greedy_generate(model, prompts, max_new_tokens: int, pad: int, batch_size: int = 32, eos=()) -> list[list[int]]:
    """Greedy new tokens per prompt (HF `generate`, left-padded batches, KV cache), cut before the first EOS (the
    model's generation_config EOS ids and `eos`)."""
    import torch

    eos = _eos_ids(model) | set(eos)
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start:start + batch_size], pad)  # (B, T)
        width = ids.shape[1]
        with torch.no_grad():
            new = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, top_p=None, top_k=None, temperature=None)[:, width:]  # (B, N)
        out += [_until_eos(row.tolist(), eos) for row in new]
    return out


def _eos_ids(model) -> set:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())


def _tokenizer_eos(tokenizer) -> set:
    return set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}


def _until_eos(tokens: list, eos: set) -> list:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


@dataclass(frozen=True)
class Prompts:
    """One encoded split: each example's prompt tokens (text cut to fit) and its label index."""

    prompts: tuple
    targets: np.ndarray


class Generation:
    """The objective of a causal LM answering with the label word (PEFT's CAUSAL_LM task type).

    loss: mean cross-entropy over the answer tokens (label word + EOS). evaluate: {"loss", "accuracy" (exact match
    of the greedy answer), "rank_accuracy" (argmax of the labels' answer log-likelihoods), "macro_f1" (of the
    ranking)}. InputError for a regression task or a --max-length too short for template + answer.
    """

    metric = "accuracy"

    def __init__(self, task, tokenizer, max_length: int):
        _check_classification(task)
        self.labels, self.tokenizer = tuple(task.labels), tokenizer
        self.answers = [answer_ids(tokenizer, label) for label in self.labels]
        self.budget = max_length - max(len(a) for a in self.answers)  # prompt tokens
        if self.budget < 1:
            raise InputError(f"--max-length {max_length}: the longest label needs {max_length - self.budget} tokens; "
                             "raise --max-length")
        self.pad = pad_id(tokenizer)

    def encode(self, split) -> Prompts:
        return Prompts(tuple(fitted_prompt(self.tokenizer, t, self.labels, self.budget) for t in split.texts),
                       np.asarray(split.targets))

    def size(self, data: Prompts) -> int:
        return len(data.prompts)

    def loss(self, model, data: Prompts, index):
        """Mean cross-entropy over the batch's answer tokens (HF's causal-LM loss with -100 labels). Rows are
        left-padded so that every answer ends the row, and only the last positions' logits are computed: the output
        layer (49,152 × 576 on SmolLM2) runs on a few positions per row instead of all."""
        import torch

        label_rows = [self.answers[int(data.targets[i])] for i in index]
        ids, mask = left_pad([list(data.prompts[i]) + a for i, a in zip(index, label_rows)], self.pad)  # (B, T)
        width = max(len(a) for a in label_rows)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       logits_to_keep=width + 1).logits[:, :-1]  # (B, width, V): predictions of the last width tokens
        targets = torch.tensor([[IGNORE] * (width - len(a)) + a for a in label_rows])  # (B, width)
        keep = targets != IGNORE
        logp = torch.log_softmax(logits[keep].float(), dim=-1)  # (n, V)
        return -logp.gather(-1, targets[keep].unsqueeze(-1)).mean()

    def label_logprobs(self, model, data: Prompts, batch_size: int = 32) -> tuple:
        """Teacher-forced answer log-likelihoods per example and label: summed (N, L), per-token mean (N, L), and
        whether greedy decoding yields exactly that label's tokens (N, L) bool; model in eval mode."""
        import torch

        parts = []
        with torch.no_grad(), _eval_mode(model):
            for start in range(0, len(data.prompts), batch_size):
                parts.append(self._score(model, data.prompts[start:start + batch_size]))
        summed, follows = (np.concatenate(x) for x in zip(*parts))
        return summed, summed / np.array([len(a) for a in self.answers]), follows

    def _score(self, model, prompts) -> tuple:
        """One batch: the prompt once (left-padded, KV cache), then every label's answer on the repeated cache."""
        import torch

        ids, mask = left_pad(prompts, self.pad)  # (B, T)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1)
        steps = [torch.log_softmax(out.logits[:, -1].float(), -1).repeat_interleave(len(self.labels), 0)]  # (B*L, V)
        width = max(len(a) for a in self.answers) - 1
        if width:  # feed each label's answer but its last token; rows b*L + j hold label j
            cont = torch.tensor([a[:-1] + [self.pad] * (width + 1 - len(a)) for a in self.answers]).repeat(len(prompts), 1)
            cmask = torch.tensor([[1] * (len(a) - 1) + [0] * (width + 1 - len(a)) for a in self.answers]).repeat(len(prompts), 1)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values  # transformers 5.x / 4.57
            cache.batch_repeat_interleave(len(self.labels))
            full = torch.cat([mask.repeat_interleave(len(self.labels), 0), cmask], dim=1)  # (B*L, T + width)
            pos = mask.sum(-1).repeat_interleave(len(self.labels))[:, None] + torch.arange(width)  # (B*L, width)
            past = {"cache" if hasattr(out, "cache") else "past_key_values": cache}
            logits = model(input_ids=cont, attention_mask=full, position_ids=pos, **past).logits
            steps += list(torch.log_softmax(logits.float(), -1).unbind(1))  # width x (B*L, V)
        return self._gather(steps, len(prompts))

    def _gather(self, steps, batch: int) -> tuple:
        """(summed log-likelihood (B, L), greedy follows the label's tokens (B, L)) from per-step log-probs."""
        summed, follows = np.zeros((batch, len(self.labels))), np.ones((batch, len(self.labels)), dtype=bool)
        for t, logp in enumerate(steps):
            best = logp.argmax(-1).view(batch, -1).numpy()  # (B, L)
            logp = logp.view(batch, len(self.labels), -1)  # (B, L, V)
            for j, answer in enumerate(self.answers):
                if t < len(answer):
                    summed[:, j] += logp[:, j, answer[t]].numpy()
                    follows[:, j] &= best[:, j] == answer[t]
        return summed, follows

    def answers_of(self, model, data: Prompts, batch_size: int = 32) -> list[str]:
        """The greedy answer to each prompt (HF generate), decoded and stripped."""
        budget = max(len(a) for a in self.answers)
        with _eval_mode(model):
            tokens = greedy_generate(model, data.prompts, budget, self.pad, batch_size, _tokenizer_eos(self.tokenizer))
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]

    def evaluate(self, model, data: Prompts, batch_size: int = 32) -> dict:
        """loss, accuracy (greedy yields exactly the true label's tokens + EOS), rank_accuracy, macro_f1 (ranking)."""
        if not len(data.prompts):
            return {}
        summed, mean, follows = self.label_logprobs(model, data, batch_size)
        targets = np.asarray(data.targets, dtype=np.int64)
        rows = np.arange(len(targets))
        ranked = summed.argmax(-1)
        return {"loss": float(-mean[rows, targets].mean()), "accuracy": float(follows[rows, targets].mean()),
                "rank_accuracy": float((ranked == targets).mean()),
                "macro_f1": macro_f1(ranked, targets, len(self.labels))}


def left_pad(prompts, pad: int) -> tuple:
    """Left-padded (input_ids, attention_mask), both (B, T) int64: the layout HF generation uses."""
    import torch

    width = max(len(r) for r in prompts)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in prompts])  # (B, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in prompts])  # (B, T)
    return ids, mask


class _eval_mode:
    """Model in eval mode inside the block, its training flag restored after."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)
