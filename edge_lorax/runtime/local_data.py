"""A person's local examples for fitting a decoder user on the device, as token ids with a loss mask; torch-free.

Formats (by suffix, then by the first JSON row's keys):
    chat JSONL        {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}: the bundle's chat
                      template renders the conversation; loss on each assistant turn's tokens (the template's end of
                      turn included), each turn's span found by rendering the conversation up to it
    completion JSONL  {"prompt": str, "completion": str}: prompt (its own special tokens) + completion + EOS, as TRL's
                      prompt-completion format concatenates them; loss on the completion and EOS
    task CSV/TSV/JSONL text + label rows as `train --model smollm2` reads them (formats.tasks): the task prompt of
                      formats.prompts (the chat turn listing the label words, or the plain template) and the label word +
                      EOS as the answer, a text too long for max_length cut at its end (builder.generative's rule)
    plain text (.txt) one document per line, or per blank-line-separated paragraph when the file has blank lines; loss
                      on every token; a document longer than max_length is cut into windows of max_length tokens
Each Example holds ids (T,) and loss (T,) bool: loss[j] says token j is a target, predicted from position j - 1.
Refused, one line naming the file, the row and the fix (DataError), before anything is fitted: text that is not UTF-8,
a row that is not a JSON object, keys of no known format or of two formats in one file, a message that is not
{role, content} strings, an unknown role, a conversation without an assistant turn, an empty answer, a row longer
than max_length (chat, completion), max_length beyond the bundle's context, fewer than MIN_EXAMPLES examples.
Does not: fit (runtime.personalize_llm), read images or tool calls, truncate chats.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from edge_lorax.formats.prompts import instruction, plain_prompt
from edge_lorax.formats.tasks import DataError, read_task
from edge_lorax.runtime.chat import has_chat_template, render_chat
from edge_lorax.runtime.tokens import load_tokenizer, special_tokens

CHAT, COMPLETION, TASK, TEXT = "chat", "completion", "task", "text"
ROLES = ("system", "user", "assistant")
MIN_EXAMPLES = 8  # some are held out to check the fit
JSON_SUFFIXES, TASK_SUFFIXES, TEXT_SUFFIXES = (".jsonl", ".ndjson"), (".csv", ".tsv", ".tab"), (".txt", ".text", ".md")


@dataclass(frozen=True)
class Example:
    ids: tuple  # (T,) token ids
    loss: tuple  # (T,) bool: token j is a target (predicted at position j - 1); loss[0] is False
    row: int  # the file's line (JSONL, text) or example number (task files) it came from
    answer: int = 0  # a task example's label index (exact match and per-label metrics), else 0


@dataclass(frozen=True)
class LocalData:
    kind: str  # CHAT, COMPLETION, TASK or TEXT
    examples: tuple
    labels: tuple = ()  # a task's label words


class Encoder:
    """The bundle's tokenizer, chat template and EOS: text to ids as the decoder runtime (runtime.llm) encodes."""

    def __init__(self, bundle: Path, eos_id: int):
        self.bundle, self.tok, self.special = Path(bundle), load_tokenizer(bundle), special_tokens(bundle)
        eos = self.special.get("eos_token")
        self.eos = self.tok.token_to_id(eos) if eos is not None and self.tok.token_to_id(eos) is not None else eos_id
        self.chat = has_chat_template(self.bundle)

    def ids(self, text: str, specials: bool = False) -> list:
        return self.tok.encode(text, add_special_tokens=specials).ids

    def render(self, messages: list, generation_prompt: bool) -> str:
        return render_chat(self.bundle, messages, self.special, generation_prompt)


def _where(path: Path, row: int) -> str:
    return f"{path}: row {row}"


def _json_rows(path: Path) -> list:
    """(line, object) of every non-blank line; DataError for text that is not UTF-8 or a line not a JSON object."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{_where(path, n)}: not JSON ({e.msg}); write one JSON object per line") from None
        except RecursionError:
            raise DataError(f"{_where(path, n)}: not JSON (nested too deeply); write one flat JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{_where(path, n)}: a JSON {type(obj).__name__}, not an object; write one "
                            '{"messages": [...]} or {"prompt": ..., "completion": ...} object per line')
        rows.append((n, obj))
    return rows


FORMAT_KEYS = {CHAT: ("messages",), COMPLETION: ("prompt", "completion")}  # a JSON row's keys per token format


def row_kind(path: Path, n: int, obj: dict, text_column: str, label_column: str) -> str:
    """CHAT, COMPLETION or TASK from the row's keys; DataError for none or two of them."""
    found = [k for k, keys in (*FORMAT_KEYS.items(), (TASK, (text_column, label_column))) if all(x in obj for x in keys)]
    if len(found) != 1:
        raise DataError(f"{_where(path, n)}: keys {sorted(obj)[:6]} match {'no' if not found else 'two'} known formats; "
                        f'give "messages" (chat), "prompt" + "completion", or "{text_column}" + "{label_column}" (task)')
    return found[0]


def _chat_example(enc: Encoder, path: Path, n: int, messages) -> Example:
    """The conversation's ids with loss on its assistant turns; DataError naming the row for a malformed message."""
    _check_messages(path, n, messages)
    full = enc.render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = enc.render(messages[:i], True) if i else ""
        start = start if full.startswith(start) else enc.render(messages[:i], False) if i else ""
        end = enc.render(messages[:i + 1], False)
        if not (full.startswith(start) and full.startswith(end)):
            raise DataError(f"{_where(path, n)}: the bundle's chat template does not render this conversation turn by "
                            "turn (a later turn changes an earlier one); use prompt/completion rows instead")
        spans.append((len(start), len(end)))
    encoding = enc.tok.encode(full, add_special_tokens=False)
    loss = [any(a <= s < b for a, b in spans) for s, _ in encoding.offsets]
    return Example(tuple(encoding.ids), tuple([False] + loss[1:]), n)


def _check_messages(path: Path, n: int, messages):
    """A list of {role, content} strings, known roles, at least one assistant turn, no empty answer."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{_where(path, n)}: "messages" is not a non-empty list; give [{{"role": ..., "content": ...}}, ...]')
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{_where(path, n)}: message {i + 1} is not {{\"role\": str, \"content\": str}}; fix it")
        if m["role"] not in ROLES:
            raise DataError(f"{_where(path, n)}: message {i + 1} has role {m['role']!r}; use one of {', '.join(ROLES)}")
        if m["role"] == "assistant" and not m["content"].strip():
            raise DataError(f"{_where(path, n)}: message {i + 1} is an empty assistant answer; write the answer or "
                            "drop the turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{_where(path, n)}: no assistant turn, so nothing to learn; add the answer as an "
                        '{"role": "assistant", ...} message')


def _completion_example(enc: Encoder, path: Path, n: int, obj: dict) -> Example:
    prompt, completion = obj["prompt"], obj["completion"]
    if not (isinstance(prompt, str) and isinstance(completion, str)):
        raise DataError(f'{_where(path, n)}: "prompt" and "completion" must be strings; fix the row')
    if not completion.strip():
        raise DataError(f'{_where(path, n)}: an empty "completion", so nothing to learn; write the answer or drop the row')
    head, tail = enc.ids(prompt, True), enc.ids(completion) + [enc.eos]
    return Example(tuple(head + tail), tuple([False] * len(head) + [True] * len(tail)), n)


def _check_length(path: Path, ex: Example, max_length: int, context: int):
    if len(ex.ids) > max_length:
        raise DataError(f"{_where(path, ex.row)}: {len(ex.ids)} tokens, more than --max-length {max_length}; shorten it "
                        f"or raise --max-length (up to the bundle's context, {context})")
    if len(ex.ids) < 2 or not any(ex.loss):
        raise DataError(f"{_where(path, ex.row)}: no answer token left to learn from; write a longer answer")


def _task_examples(enc: Encoder, path: Path, text_column: str, label_column: str, max_length: int) -> LocalData:
    """A task file as `train --model smollm2` reads it: prompt listing the labels, answer label (+ EOS)."""
    task = read_task(path, text_column, label_column, fractions=(1.0, 0.0, 0.0))
    labels = tuple(task.labels)
    answers = [enc.ids(lab if enc.chat else f" {lab}") + [enc.eos] for lab in labels]
    budget = max_length - max(len(a) for a in answers)
    out = []
    for i, (text, y) in enumerate(zip(task.train.texts, task.train.targets)):
        prompt = _fitted_prompt(enc, path, text, labels, budget)
        answer = answers[int(y)]
        out.append(Example(tuple(prompt + answer), tuple([False] * len(prompt) + [True] * len(answer)), i + 1, int(y)))
    return LocalData(TASK, tuple(out), labels)


def task_prompt(enc: Encoder, text: str, labels) -> list:
    """The task prompt's ids (formats.prompts), as runtime.llm asks it with --choices."""
    if enc.chat:
        return enc.ids(enc.render([{"role": "user", "content": instruction(text, list(labels))}], True))
    return enc.ids(plain_prompt(text))


def _fitted_prompt(enc: Encoder, path: Path, text: str, labels, budget: int) -> list:
    """The prompt's ids, at most `budget`: a long text is cut at its end (builder.generative.fitted_prompt)."""
    prompt = task_prompt(enc, text, labels)
    if len(prompt) <= budget:
        return prompt
    overhead = len(task_prompt(enc, "", labels))
    if overhead >= budget:
        raise DataError(f"{path}: the task prompt alone needs {overhead} tokens plus the answer's; raise --max-length "
                        f"above {overhead} + the longest label's tokens")
    text_ids, keep = enc.ids(text), budget - overhead
    while keep > 0 and len(prompt) > budget:  # re-tokenising a cut text may shift a token or two
        prompt, keep = task_prompt(enc, enc.tok.decode(text_ids[:keep]), labels), keep - 1
    return prompt if len(prompt) <= budget else task_prompt(enc, "", labels)


def _text_examples(enc: Encoder, path: Path, max_length: int) -> LocalData:
    """Documents (lines, or blank-line-separated paragraphs) in windows of max_length tokens, loss on each token."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    lines = text.splitlines()
    paragraphs = any(not x.strip() for x in lines[1:-1]) and any(x.strip() for x in lines)
    docs, current, start = [], [], 1
    for n, line in enumerate(lines + [""], 1):
        if line.strip() and not current:
            start = n
        if line.strip():
            current.append(line)
        if current and (not line.strip() or not paragraphs):
            docs.append((start, "\n".join(current)))
            current = []
    out = []
    for row, doc in docs:
        ids = enc.ids(doc, True)
        for i in range(0, len(ids), max_length):
            piece = ids[i:i + max_length]
            if len(piece) >= 2:
                out.append(Example(tuple(piece), tuple([False] + [True] * (len(piece) - 1)), row))
    return LocalData(TEXT, tuple(out))


def token_format(path) -> str | None:
    """TEXT, CHAT or COMPLETION when `path` is a file of those formats (by suffix, then by the first JSON row's keys),
    else None (a task file, a malformed first row or a data set name: the task reader's to judge). Lets `train`
    send a local file that `personalize` reads as token examples to the same reader."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in TEXT_SUFFIXES + JSON_SUFFIXES:
        return None
    if suffix in TEXT_SUFFIXES:
        return TEXT
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = json.loads(next((line for line in f if line.strip()), "null"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # the task reader refuses it in one line
        return None
    if not isinstance(first, dict):
        return None
    return next((kind for kind, keys in FORMAT_KEYS.items() if all(x in first for x in keys)), None)


def read_local_data(path, bundle: Path, eos_id: int, max_length: int, context: int, text_column: str = "text",
                    label_column: str = "label") -> LocalData:
    """The examples of a local data file (module docstring) for the decoder bundle at `bundle`; DataError (one line)
    for any malformed row, an unknown format or too few examples."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a .jsonl, .csv, .tsv or .txt file of your examples")
    if max_length > context:
        raise DataError(f"--max-length {max_length} is beyond the bundle's context ({context}); pass {context} or less")
    enc, suffix = Encoder(bundle, eos_id), path.suffix.lower()
    if suffix in TASK_SUFFIXES:
        data = _task_examples(enc, path, text_column, label_column, max_length)
    elif suffix in TEXT_SUFFIXES:
        data = _text_examples(enc, path, max_length)
    elif suffix in JSON_SUFFIXES:
        data = _json_examples(enc, path, max_length, context, text_column, label_column)
    else:
        raise DataError(f"{path}: suffix {path.suffix!r} is not a known data format; use .jsonl (chat or prompt/"
                        "completion rows), .csv / .tsv (text + label) or .txt (plain text)")
    if len(data.examples) < MIN_EXAMPLES:
        raise DataError(f"{path}: {len(data.examples)} examples; fitting needs at least {MIN_EXAMPLES} (some are "
                        "held out to check the fit)")
    return data


def _json_examples(enc: Encoder, path: Path, max_length: int, context: int, text_column: str,
                   label_column: str) -> LocalData:
    rows = _json_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows; write one JSON object per line")
    kinds = {row_kind(path, n, obj, text_column, label_column) for n, obj in rows}
    if len(kinds) > 1:
        first = rows[0][1]
        kind = row_kind(path, rows[0][0], first, text_column, label_column)
        n = next(n for n, o in rows if row_kind(path, n, o, text_column, label_column) != kind)
        raise DataError(f"{_where(path, n)}: a different format from row {rows[0][0]} ({kind}); keep one format per file")
    kind = kinds.pop()
    if kind == TASK:
        return _task_examples(enc, path, text_column, label_column, max_length)
    out = []
    for n, obj in rows:
        ex = _chat_example(enc, path, n, obj["messages"]) if kind == CHAT else _completion_example(enc, path, n, obj)
        _check_length(path, ex, max_length, context)
        out.append(ex)
    return LocalData(kind, tuple(out))
