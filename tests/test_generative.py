"""builder.generative on a tiny random Llama and a tiny word-level tokenizer: answer-only masks, padding-invariant
losses, the HF loss convention, both metrics on a hand-made bigram model, and a few steps that lower the loss."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edge_lorax.builder import generative as gen
from edge_lorax.builder.data import CLASSIFICATION, Split, Task
from edge_lorax.formats.errors import InputError
from helpers import tiny_config

WORDS = ["<pad>", "<unk>", "</s>", "text", ":", "answer", "positive", "negative", "good", "bad", "movie", "very", "!"]
LABELS = ("negative", "positive")


def tiny_tokenizer():
    """A word-level fast tokenizer: pad, unk and EOS specials, no chat template."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def tiny_llama(seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config("llama", vocab=len(WORDS))).eval()


def tiny_task(texts, targets) -> Task:
    split = Split(tuple(texts), np.asarray(targets, dtype=np.int64))
    return Task("tiny", CLASSIFICATION, LABELS, split, split, split)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_plain_prompt_and_answer_tokens(tok):
    assert gen.render_prompt(tok, "good movie") == "Text: good movie\nAnswer:"
    assert tok.convert_ids_to_tokens(gen.answer_ids(tok, "positive")) == ["positive", "</s>"]


def test_chat_template_is_used_when_present():
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}" \
                        "{% if add_generation_prompt %}<assistant>{% endif %}"
    assert gen.render_prompt(tok, "good") == "<user>good\nAnswer with one word.<assistant>"
    assert gen.render_prompt(tok, "good", LABELS) == "<user>good\nAnswer with one word: negative or positive.<assistant>"


def test_labels_cover_the_answer_only(tok):
    ids, labels = gen.encode_pair(tok, "good movie", "positive")
    assert tok.convert_ids_to_tokens(ids) == ["text", ":", "good", "movie", "answer", ":", "positive", "</s>"]
    assert labels == [-100] * 6 + [WORDS.index("positive"), WORDS.index("</s>")]


def test_truncation_keeps_the_answer(tok):
    ids, labels = gen.encode_pair(tok, "good movie very very bad", "negative", max_length=5)
    assert len(ids) == 5 and labels[-2:] == ids[-2:] == [WORDS.index("negative"), WORDS.index("</s>")]
    assert labels[:3] == [-100] * 3
    with pytest.raises(InputError, match="max-length"):
        gen.encode_pair(tok, "good", "negative", max_length=2)


def test_collate_right_pads_with_masks(tok):
    pairs = [gen.encode_pair(tok, "good", "positive"), gen.encode_pair(tok, "very very bad movie", "negative")]
    batch = gen.collate(pairs, gen.pad_id(tok))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 10)
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0] * 3
    assert batch["input_ids"][0, 7:].tolist() == [0] * 3 and batch["labels"][0, 7:].tolist() == [-100] * 3
    assert (batch["labels"] != -100).sum(-1).tolist() == [2, 2]


def test_padding_does_not_change_losses_and_matches_hf(tok):
    model = tiny_llama()
    pairs = [gen.encode_pair(tok, t, lab) for t, lab in [("good", "positive"), ("very bad movie !", "negative"),
                                                        ("movie", "negative")]]
    with torch.no_grad():
        batched = gen.answer_losses(model, gen.collate(pairs, gen.pad_id(tok)))  # (B,)
        alone = torch.cat([gen.answer_losses(model, gen.collate([p], gen.pad_id(tok))) for p in pairs])
        single = gen.collate(pairs[1:2], gen.pad_id(tok))
        hf = model(input_ids=single["input_ids"], labels=single["labels"]).loss
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[1], hf, atol=1e-5, rtol=1e-5)


class Bigram(torch.nn.Module):
    """Hand-made next-token logits from the last token: "negative" is always likely, EOS follows it."""

    def __init__(self):
        super().__init__()
        table = torch.zeros(len(WORDS), len(WORDS))
        table[:, WORDS.index("negative")] = 5.0
        table[:, WORDS.index("positive")] = 3.0
        table[WORDS.index("negative"), WORDS.index("</s>")] = 10.0
        self.table = table

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def test_ranking_picks_the_most_likely_label(tok):
    scores = gen.label_scores(Bigram(), tok, "good movie", LABELS)  # (L,)
    assert scores[0] > scores[1]
    assert gen.rank_predictions(Bigram(), tok, ["good", "bad"], LABELS) == [0, 0]
    # on the random Llama the pick is the argmax of HF's own per-label loss (times the answer length)
    model = tiny_llama(seed=3)
    with torch.no_grad():
        nll = []
        for label in LABELS:
            batch = gen.collate([gen.encode_pair(tok, "good movie", label)], gen.pad_id(tok))
            nll.append(float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss) * 2)
    assert gen.rank_predictions(model, tok, ["good movie"], LABELS) == [int(np.argmin(nll))]


def test_evaluate_generative_on_a_hand_made_model(tok):
    assert gen.greedy_answer(Bigram(), tok, "good movie", 5) == "negative"
    task = tiny_task(["good movie", "bad", "very good !", "bad movie"], [1, 0, 1, 0])
    assert gen.evaluate_generative(Bigram(), tok, task) == {"exact_match": 0.5, "rank_accuracy": 0.5}


def test_regression_tasks_are_refused(tok):
    split = Split(("a",), np.zeros(1, dtype=np.float32))
    with pytest.raises(InputError, match="classification"):
        gen.task_pairs(tok, Task("r", "regression", (), split, split, split))


def test_a_few_steps_lower_the_answer_loss(tok):
    model = tiny_llama()
    for p in model.parameters():
        p.requires_grad_(False)
    norm = model.model.norm.weight  # the final RMSNorm scale: 32 trainable values, a stand-in for coefficients
    norm.requires_grad_(True)
    batch = gen.collate(gen.task_pairs(tok, tiny_task(["good movie"], [1])), gen.pad_id(tok))
    opt = torch.optim.Adam([norm], lr=5e-2)
    with torch.no_grad():
        before = float(gen.answer_loss(model, batch))
    for _ in range(5):
        opt.zero_grad()
        gen.answer_loss(model, batch).backward()
        opt.step()
    with torch.no_grad():
        after = float(gen.answer_loss(model, batch))
    assert after < before - 0.05
