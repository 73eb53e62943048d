"""builder.generative on a tiny random Llama and a tiny word-level tokenizer: answer-only masks, padding-invariant
losses, the HF loss convention, both metrics against reference computations (HF per-label losses, a plain argmax
decoding loop), and the shared loop fitting a LoRA on a causal LM until greedy answers are right."""


import numpy as np
import pytest
import torch

from edge_lorax.builder import generative as gen
from edge_lorax.builder.data import CLASSIFICATION, Split, Task
from edge_lorax.formats.errors import InputError
from helpers import generative_ref as ref
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


def pair(prompt, answer):
    """(input_ids, labels) of a prompt and its answer tokens: labels -100 on the prompt."""
    return list(prompt) + answer, [-100] * len(prompt) + answer


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
    ids, labels = ref.encode_pair(tok, "good movie", "positive")
    assert tok.convert_ids_to_tokens(ids) == ["text", ":", "good", "movie", "answer", ":", "positive", "</s>"]
    assert labels == [-100] * 6 + [WORDS.index("positive"), WORDS.index("</s>")]


def test_truncation_cuts_the_text_and_keeps_template_and_answer(tok):
    ids, labels = ref.encode_pair(tok, "good movie very very bad", "negative", max_length=8)
    assert tok.convert_ids_to_tokens(ids) == ["text", ":", "good", "movie", "answer", ":", "negative", "</s>"]
    assert labels == [-100] * 6 + ids[-2:]
    with pytest.raises(InputError, match="max-length"):
        ref.encode_pair(tok, "good", "negative", max_length=2)
    with pytest.raises(InputError, match="max-length"):
        ref.encode_pair(tok, "good", "negative", max_length=5)  # the template alone needs 4, the answer 2


def test_collate_right_pads_with_masks(tok):
    pairs = [ref.encode_pair(tok, "good", "positive"), ref.encode_pair(tok, "very very bad movie", "negative")]
    batch = ref.collate(pairs, gen.pad_id(tok))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 10)
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0] * 3
    assert batch["input_ids"][0, 7:].tolist() == [0] * 3 and batch["labels"][0, 7:].tolist() == [-100] * 3
    assert (batch["labels"] != -100).sum(-1).tolist() == [2, 2]


def test_padding_does_not_change_losses_and_matches_hf(tok):
    model = tiny_llama()
    pairs = [ref.encode_pair(tok, t, lab) for t, lab in [("good", "positive"), ("very bad movie !", "negative"),
                                                        ("movie", "negative")]]
    with torch.no_grad():
        batched = ref.answer_losses(model, ref.collate(pairs, gen.pad_id(tok)))  # (B,)
        alone = torch.cat([ref.answer_losses(model, ref.collate([p], gen.pad_id(tok))) for p in pairs])
        single = ref.collate(pairs[1:2], gen.pad_id(tok))
        hf = model(input_ids=single["input_ids"], labels=single["labels"]).loss
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[1], hf, atol=1e-5, rtol=1e-5)


def objective(max_length=32):
    return gen.Generation(tiny_task(["good movie", "bad", "very good !", "bad movie"], [1, 0, 1, 0]), tiny_tokenizer(),
                          max_length)


def reference_greedy(model, prompt, steps, eos):
    """A plain argmax loop on the unpadded prompt, no cache: the definition greedy_generate must match."""
    ids, new = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == eos:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return new


def test_greedy_generate_matches_an_argmax_loop_in_padded_batches(tok):
    model = tiny_llama(seed=5)
    prompts = [gen.prompt_ids(tok, t) for t in ["good", "very very bad movie !", "movie"]]
    got = gen.greedy_generate(model, prompts, 4, gen.pad_id(tok), batch_size=3, eos={tok.eos_token_id})
    assert got == [reference_greedy(model, p, 4, tok.eos_token_id) for p in prompts]
    assert any(len(g) == 4 for g in got)  # the random model rarely says EOS: the loop really ran 4 steps


def test_evaluate_matches_reference_metrics(tok):
    model, obj = tiny_llama(seed=3), objective()
    data = obj.encode(obj_task().test)
    scores = obj.evaluate(model, data, batch_size=3)
    nll = np.zeros((4, 2))  # HF's own per-label mean loss
    with torch.no_grad():
        for i, prompt in enumerate(data.prompts):
            for j, answer in enumerate(obj.answers):
                batch = ref.collate([(list(prompt) + answer, [-100] * len(prompt) + answer)], gen.pad_id(tok))
                nll[i, j] = float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss)
    targets = np.array([1, 0, 1, 0])
    assert scores["rank_accuracy"] == float((nll.argmin(-1) == targets).mean())  # answers have equal lengths here
    assert scores["loss"] == pytest.approx(nll[np.arange(4), targets].mean(), abs=1e-5)
    answers = [tok.decode(reference_greedy(model, p, 2, tok.eos_token_id)).strip() for p in data.prompts]
    assert scores["accuracy"] == np.mean([a == LABELS[t] for a, t in zip(answers, targets)])


def test_cached_label_scores_match_full_forwards_with_unequal_answers(tok):
    """Labels of 1 and 2 words (2 and 3 answer tokens), prompts of different lengths: the cached pass (prompt once,
    answers on the repeated cache) equals HF's summed answer log-likelihood of each full sequence."""
    split = Split(("good", "very very bad movie !", "movie"), np.array([0, 1, 0]))
    obj = gen.Generation(Task("t", CLASSIFICATION, ("negative", "very good"), split, split, split), tok, 32)
    model, data = tiny_llama(seed=7), obj.encode(split)
    summed, mean, follows = obj.label_logprobs(model, data, batch_size=2)
    for i, prompt in enumerate(data.prompts):
        for j, answer in enumerate(obj.answers):
            batch = ref.collate([(list(prompt) + answer, [-100] * len(prompt) + answer)], gen.pad_id(tok))
            with torch.no_grad():
                hf = float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss) * len(answer)
            assert summed[i, j] == pytest.approx(-hf, abs=1e-4)
            greedy = reference_greedy(model, prompt, len(answer), tok.eos_token_id)
            assert follows[i, j] == (greedy + [tok.eos_token_id] == answer)
    assert mean.shape == follows.shape == (3, 2)


def obj_task():
    return tiny_task(["good movie", "bad", "very good !", "bad movie"], [1, 0, 1, 0])


def test_training_loss_equals_the_right_padded_reference(tok):
    """Generation.loss (left-padded, last positions' logits only) = answer_loss on the right-padded full batch, for
    prompts and answers of different lengths; gradients flow."""
    split = Split(("good", "very very bad movie !", "movie"), np.array([0, 1, 1]))
    obj = gen.Generation(Task("t", CLASSIFICATION, ("negative", "very good"), split, split, split), tok, 32)
    model, data = tiny_llama(seed=2), obj.encode(split)
    got = obj.loss(model, data, [0, 1, 2])
    pairs = [pair(data.prompts[i], obj.answers[int(data.targets[i])]) for i in range(3)]
    torch.testing.assert_close(got, ref.answer_loss(model, ref.collate(pairs, gen.pad_id(tok))), atol=1e-5, rtol=1e-5)
    got.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_regression_and_short_max_length_are_refused(tok):
    split = Split(("a",), np.zeros(1, dtype=np.float32))
    with pytest.raises(InputError, match="classification"):
        gen.Generation(Task("r", "regression", (), split, split, split), tok, 32)
    with pytest.raises(InputError, match="max-length"):
        gen.Generation(obj_task(), tok, 2)


def test_lora_fit_on_a_causal_lm_learns_the_label_words(tok):
    from peft import LoraConfig, get_peft_model

    from edge_lorax.builder.loop import TrainConfig, fit

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    task_type="CAUSAL_LM"))
    obj, task = objective(), obj_task()
    before = obj.evaluate(model, obj.encode(task.test))
    result = fit(model, task, tok, TrainConfig(lr=5e-2, batch_size=4, steps=60, max_length=32, eval_every=0),
                 progress=False, objective=obj)
    assert before["accuracy"] < 1.0 and result.test["accuracy"] == 1.0 and result.test["rank_accuracy"] == 1.0
    answers = obj.answers_of(model, obj.encode(task.test))  # HF generate decodes freely: the same answers
    assert answers == [LABELS[t] for t in task.test.targets]
    assert result.test["loss"] < before["loss"] - 0.3


def test_a_few_steps_lower_the_answer_loss(tok):
    model = tiny_llama()
    for p in model.parameters():
        p.requires_grad_(False)
    norm = model.model.norm.weight  # the final RMSNorm scale: 32 trainable values, a stand-in for coefficients
    norm.requires_grad_(True)
    batch = ref.collate([ref.encode_pair(tok, "good movie", "positive")], gen.pad_id(tok))
    opt = torch.optim.Adam([norm], lr=5e-2)
    with torch.no_grad():
        before = float(ref.answer_loss(model, batch))
    for _ in range(5):
        opt.zero_grad()
        ref.answer_loss(model, batch).backward()
        opt.step()
    with torch.no_grad():
        after = float(ref.answer_loss(model, batch))
    assert after < before - 0.05
