"""Generate from a decoder bundle with onnxruntime-genai: load once, register users, pick one per generation.

    llm = load_llm("bundle")                      # one og.Model; the graph's defaults are the bundle's own user
    llm.add_user("alice", "alice.npz")            # or an .onnx_adapter; checked against the bundle's fingerprint
    for token in llm.generate("Hello", user="alice", max_new_tokens=32):  # Generation: token ids as they come
        ...

Text <-> tokens with the bundle's tokenizer.json (the `tokenizers` package) and, for --chat, its chat template
rendered with jinja2 as transformers renders it (sandboxed, trim_blocks, lstrip_blocks); onnxruntime-genai's own
tokenizer is not used (it cannot read every tokenizer.json, e.g. WordLevel ones). A user is an onnxruntime-genai
adapter (`og.Adapters`): its tensors are fed by name to the coefficient inputs, and `Generator.set_active_adapter`
picks it for one generation, with no reload (ORT docs, "Multi-LoRA"). Greedy unless a temperature > 0 is given (then
top-p / top-k sampling, seeded). Generation stops at the model's EOS token(s) or after max_new_tokens. Refuses, in
one line: a bundle that is not a decoder bundle, a missing or unreadable tokenizer, a user of another subspace or
shape, a prompt that leaves no room in the context. `generate_batch` serves one user per row on a bundle exported
with --per-example. Does not: stream batched rows, import torch.
"""

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_lorax.formats import architectures, names
from edge_lorax.formats.bundle import TARGET_DECODER, bundle_file, read_manifest, user_input_shapes
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.jsonfile import read_json_object
from edge_lorax.formats.onnx_adapter import read_onnx_adapter, unnamed_onnx_adapter
from edge_lorax.formats.prompts import instruction, plain_prompt
from edge_lorax.formats.user import check_fingerprint, conform_inputs, read_user
from edge_lorax.runtime.bundle import usable_cores
from edge_lorax.runtime.chat import has_chat_template, render_chat
from edge_lorax.runtime.tokens import load_tokenizer, special_tokens


@dataclass
class Generation:
    """One prompt's generation; iterate it for token ids as they are produced. Times in ms, rates in tokens/s."""

    prompt: str
    prompt_tokens: int
    tokens: list = field(default_factory=list)
    time_to_first_token_ms: float | None = None
    tokens_per_s: float | None = None  # decode rate after the first token
    _steps: object = None

    def __iter__(self):
        yield from self._steps


def _manifest(bundle: Path) -> dict:
    """The bundle's manifest through the one reader (formats.bundle), refused unless a genai-decoder bundle (naming
    its task and model type, and the model types that get one)."""
    manifest = read_manifest(bundle)
    if manifest["target"] != TARGET_DECODER:
        config = bundle_file(bundle, names.BUNDLE_CONFIG)
        model_type = read_json_object(config, "re-export the bundle").get("model_type") if config else None
        architectures.refuse_generate(bundle, manifest.get("task"), model_type)
    return manifest


class LLM:
    """A decoder bundle loaded once: og.Model, the tokenizer, the chat template and the registered users (og.Adapters)."""

    def __init__(self, bundle, threads: int | None = None):
        import onnxruntime_genai as og

        self.bundle = Path(bundle)
        self.manifest = _manifest(self.bundle)
        check_threads(threads)
        self.vocab_size = _check_genai_config(self.bundle, self.manifest)
        self.tokenizer, self.special = load_tokenizer(self.bundle), special_tokens(self.bundle)
        eos = self.manifest["eos_token_id"]
        self.eos = set(eos if isinstance(eos, list) else [eos])
        if not all(type(e) is int for e in self.eos):
            raise InputError(f"{self.bundle / names.BUNDLE_MANIFEST}: eos_token_id {eos!r} is not a token id or a list of "
                             "them; re-export the bundle")
        self._og, self.model = og, _load_model(og, self.bundle, threads)
        self.adapters, self.users, self._arrays, self._batches = og.Adapters(self.model), {}, {}, {}

    @property
    def context_length(self) -> int:
        return int(self.manifest["kv"]["context_length"])

    def add_user(self, name: str, path) -> str:
        """Register a user.npz or .onnx_adapter under `name`, checked by the one validator (formats.user: fingerprint,
        names, float32, finite and bounded values, shapes; a lower K' or r' is zero-padded, exactly as `run` and
        `export --coeffs` do). InputError naming the file for a name taken or any defect. A file the graph takes as
        it is is memory-mapped; otherwise (a user.npz, a padded user, one user's file on a per-example bundle) a
        converted copy is. Only a per-example bundle keeps the user's arrays in Python as well (to stack a batch)."""
        path = Path(path)
        if name in self.users:
            raise InputError(f"user name {name!r} is taken (by {self.users[name]}); register {path} under another name")
        raw, stored = self._read_user_file(path)
        arrays = self._as_graph_inputs(conform_inputs(path, raw, user_input_shapes(self.manifest), f"bundle {self.bundle}"))
        if stored is not None and all(stored.get(k) == arrays[k].shape for k in arrays):
            self.adapters.load(str(path), name)
        else:
            with unnamed_onnx_adapter(arrays, self.manifest["fingerprint"]) as file:  # nothing left on disk
                self.adapters.load(file, name)
        self.users[name] = path
        if self.manifest["mode"] == names.MODE_PER_EXAMPLE:  # kept to stack a batch's users; else ORT holds them
            self._arrays[name] = arrays
        return name

    def _read_user_file(self, path: Path) -> tuple:
        """(one user's arrays by input name, the file's own tensor shapes when it is an .onnx_adapter else None), its
        subspace checked (formats.user.check_fingerprint); an adapter of a per-example bundle ((1, r, K)) is read as
        one user's (r, K)."""
        if path.suffix == names.ADAPTER_SUFFIX:
            raw, version = read_onnx_adapter(path)
            check_fingerprint(version, self.manifest["fingerprint"], path)
            per_example = self.manifest["mode"] == names.MODE_PER_EXAMPLE
            one = {k: v[0] if per_example and v.ndim == 3 and v.shape[0] == 1 else v for k, v in raw.items()}
            return one, {k: v.shape for k, v in raw.items()}
        user = read_user(path)
        check_fingerprint(user, self.manifest["fingerprint"], path)
        if user.head:
            raise InputError(f"{path}: a classifier user (head tensors {sorted(user.head)}); a decoder bundle "
                             "generates, so train the user for generation (`edge-lorax train --model smollm2 ...`)")
        return user.inputs(), None

    def _as_graph_inputs(self, arrays: dict) -> dict:
        """One user's (r, K) / (K, r) arrays as the graph takes them: (1, r, K) / (1, K, r) in a per-example bundle."""
        if self.manifest["mode"] != names.MODE_PER_EXAMPLE:
            return arrays
        return {k: v[None] if v.ndim == 2 else v for k, v in arrays.items()}

    def encode(self, prompt: str, chat: bool = False, choices=()) -> list:
        """Token ids of the prompt (the tokenizer's own special tokens); chat renders the chat template around one
        user turn with the generation prompt, then encodes without adding special tokens (transformers' rule).
        choices (the label words): the prompt asked in the task format a decoder user is trained on
        (formats.prompts: the chat turn `TEXT\nAnswer with one word: A or B.`, or the plain template without one)."""
        try:
            prompt.encode("utf-8")
        except (UnicodeEncodeError, AttributeError) as e:
            raise InputError(f"prompt {prompt!r:.60}: not UTF-8 text; pass the prompt as UTF-8") from e
        if choices:
            return self._task_ids(prompt, list(choices))
        if chat:
            text = render_chat(self.bundle, [{"role": "user", "content": prompt}], self.special)
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        else:
            ids = self.tokenizer.encode(prompt).ids
        if not ids:
            raise InputError("the prompt encodes to no tokens; give a non-empty prompt (or --chat, which adds the "
                             "template's tokens)")
        return ids

    def _task_ids(self, text: str, choices: list) -> list:
        """The task prompt's ids, as builder.generative renders it for training (formats.prompts)."""
        if not all(isinstance(c, str) and c.strip() for c in choices):
            raise InputError(f"--choices {choices!r}: give the label words, comma-separated (e.g. --choices ham,spam)")
        if has_chat_template(self.bundle):
            text = render_chat(self.bundle, [{"role": "user", "content": instruction(text, choices)}], self.special)
        else:
            text = plain_prompt(text)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def generate(self, prompt: str, user: str | None = None, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, chat: bool = False,
                 choices=()) -> Generation:
        """A Generation to iterate (token ids); user None = the bundle's defaults. Raises InputError for an unknown
        user or a prompt + max_new_tokens beyond the context."""
        _check_options(max_new_tokens, temperature, top_p, top_k, seed, self.vocab_size)
        ids = self.encode(prompt, chat, choices)
        if len(ids) + max_new_tokens > self.context_length:
            raise InputError(f"prompt of {len(ids)} tokens + {max_new_tokens} new ones exceeds the context of "
                             f"{self.context_length}; shorten the prompt or lower --max-new-tokens")
        if user is not None and user not in self.users:
            raise InputError(f"user {user!r} is not registered; add it first (known: {sorted(self.users)})")
        gen = Generation(prompt, len(ids))
        gen._steps = self._steps(gen, ids, user, max_new_tokens, temperature, top_p, top_k, seed)
        return gen

    def generate_batch(self, prompts: list, users: list, max_new_tokens: int = 64, temperature: float = 0.0,
                       top_p: float = 1.0, top_k: int = 0, seed: int | None = None, chat: bool = False) -> list:
        """One batched generation where row i uses users[i] (a per-example bundle: the rows share every base-model
        MatMul and x · C_Aᵀ; only the K x r mixing differs). Prompts must have equal token lengths. Returns token
        lists, each cut at its first EOS. InputError on a bundle exported without --per-example, an unknown user or
        prompts of unequal length."""
        if self.manifest["mode"] != names.MODE_PER_EXAMPLE:
            raise InputError(f"{self.bundle}: exported without --per-example, so one batch serves one user; re-export "
                             "with --per-example for a user per row")
        _check_options(max_new_tokens, temperature, top_p, top_k, seed, self.vocab_size)
        if len(prompts) != len(users) or not prompts:
            raise InputError(f"{len(prompts)} prompts and {len(users)} users: give one user per prompt")
        unknown = sorted({u for u in users if u not in self._arrays})
        if unknown:
            raise InputError(f"users {unknown} are not registered; add them first (known: {sorted(self.users)})")
        ids = [self.encode(p, chat) for p in prompts]
        width = max(len(i) for i in ids)
        if any(len(i) != width for i in ids):  # measured: a left-padded row generated other tokens than alone
            raise InputError(f"prompts of {sorted({len(i) for i in ids})} tokens in one batch; GroupQueryAttention here "
                             "takes no padding, so batch prompts of equal token length (or generate them one by one)")
        if width + max_new_tokens > self.context_length:
            raise InputError(f"a prompt of {width} tokens + {max_new_tokens} new ones exceeds the context of "
                             f"{self.context_length}; shorten it or lower --max-new-tokens")
        tokens = np.array(ids, np.int32)  # (batch, width)
        params = self._params(width + max_new_tokens, temperature, top_p, top_k, seed)
        params.set_search_options(batch_size=len(prompts))
        generator = self._og.Generator(self.model, params)
        generator.set_active_adapter(self.adapters, self._batch_adapter(tuple(users)))
        generator.append_tokens(tokens)
        out = [[] for _ in prompts]
        while not generator.is_done():
            generator.generate_next_token()
            for row, token in enumerate(generator.get_next_tokens()):
                out[row].append(int(token))
        return [row[:next((i for i, t in enumerate(row) if t in self.eos), len(row))] for row in out]

    def _batch_adapter(self, users: tuple) -> str:
        """An adapter stacking the rows' users (batch_size, r, K), made once per combination of users."""
        if users not in self._batches:
            arrays = {k: np.concatenate([self._arrays[u][k] for u in users]) for k in self._arrays[users[0]]}
            name = f"batch{len(self._batches)}"
            with unnamed_onnx_adapter(arrays, self.manifest["fingerprint"]) as file:
                self.adapters.load(file, name)
            self._batches[users] = name
        return self._batches[users]

    def _params(self, total: int, temperature: float, top_p: float, top_k: int, seed):
        params = self._og.GeneratorParams(self.model)
        options = {"max_length": total, "do_sample": bool(temperature and temperature > 0)}
        if options["do_sample"]:
            options.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
            if seed is not None:
                options["random_seed"] = int(seed)
        params.set_search_options(**options)
        return params

    def _steps(self, gen: Generation, ids: list, user, max_new: int, temperature, top_p, top_k, seed):
        generator = self._og.Generator(self.model, self._params(len(ids) + max_new, temperature, top_p, top_k, seed))
        if user is not None:
            generator.set_active_adapter(self.adapters, user)
        start = time.perf_counter()
        generator.append_tokens(ids)
        first = None
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if first is None:
                first = time.perf_counter()
                gen.time_to_first_token_ms = (first - start) * 1e3
            if token in self.eos:
                break
            gen.tokens.append(token)
            yield token
        if first is not None and len(gen.tokens) > 1:
            gen.tokens_per_s = (len(gen.tokens) - 1) / (time.perf_counter() - first)


def text_deltas(decode, gen) -> Iterator[str]:
    """Iterate a Generation as text pieces: the tokens so far are decoded as a whole and a trailing U+FFFD (a
    character whose bytes span tokens still to come) is held back, so multi-byte characters arrive whole; the last
    piece completes the text. `decode`: token ids -> str (LLM.decode)."""
    shown = ""
    for _ in gen:
        text = decode(gen.tokens).rstrip("\ufffd")
        if text.startswith(shown) and text != shown:
            yield text[len(shown):]
            shown = text
    text = decode(gen.tokens)
    if text.startswith(shown) and text != shown:
        yield text[len(shown):]


MAX_SEED = 2**31 - 1  # onnxruntime-genai's random_seed is a C++ int


def _check_options(max_new_tokens, temperature, top_p, top_k, seed=None, vocab_size: int | None = None):
    """The sampling options onnxruntime-genai takes: InputError naming the option for anything it would reject with a
    traceback or silently reinterpret (NaN / inf temperature, a boolean count, top_k past the vocabulary, a seed
    past a C int)."""
    if type(max_new_tokens) is not int or max_new_tokens < 1:
        raise InputError(f"--max-new-tokens {max_new_tokens!r}: give a whole number of at least 1")
    finite = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (temperature, top_p))
    if not finite or temperature < 0 or not 0 < top_p <= 1:
        raise InputError(f"--temperature {temperature!r}, --top-p {top_p!r}: need a finite temperature >= 0 (0: greedy) "
                         "and 0 < top_p <= 1")
    if temperature == 0 and (top_p != 1 or top_k != 0):
        raise InputError(f"--top-p {top_p} / --top-k {top_k} shape sampling, and --temperature 0 decodes greedily; add "
                         "--temperature (e.g. 0.7) to sample, or drop them")
    most = vocab_size or MAX_SEED
    if type(top_k) is not int or not 0 <= top_k <= most:
        raise InputError(f"--top-k {top_k!r}: give 0 (no cut) to {most} (the vocabulary)")
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise InputError(f"--seed {seed!r}: give 0 to {MAX_SEED}")


def check_threads(threads) -> int | None:
    """threads (--threads): None (onnxruntime-genai's choice) or 1 .. this machine's usable cores (more only slow runs
    down and spawn threads by the thousand)."""
    cores = usable_cores()
    if threads is not None and (type(threads) is not int or not 1 <= threads <= cores):
        raise InputError(f"--threads {threads!r}: give 1 to {cores} (this machine's usable cores)")
    return threads


def _check_genai_config(bundle: Path, manifest: dict) -> int | None:
    """genai_config.json: a JSON object whose model.type gets a KV-cache bundle (formats.architectures) and whose
    context length and EOS ids are the manifest's (the runtime budgets and stops by the manifest's); returns its
    vocab_size (None when absent)."""
    path = bundle_file(bundle, names.GENAI_CONFIG)
    if path is None:
        raise InputError(f"{bundle}: no {names.GENAI_CONFIG}; re-export the bundle with `edge-lorax export`")
    model = read_json_object(path, "re-export the bundle").get("model")
    model = model if isinstance(model, dict) else {}
    if model.get("type") not in {architectures.get_architecture(t).genai_type for t in architectures.kv_cache_types()}:
        raise InputError(f"{path}: model.type {model.get('type')!r} is not a decoder type this runtime serves "
                         f"({', '.join(architectures.kv_cache_types())}); re-export the bundle")
    for key, want in (("context_length", manifest["kv"]["context_length"]), ("eos_token_id", manifest["eos_token_id"])):
        if model.get(key) != want:
            raise InputError(f"{path}: model.{key} {model.get(key)!r}, but {names.BUNDLE_MANIFEST} says {want!r}; the "
                             "folder mixes two exports or was edited, re-export the bundle")
    vocab = model.get("vocab_size")
    return vocab if type(vocab) is int and vocab > 0 else None


def _load_model(og, bundle: Path, threads: int | None):
    """og.Model of the bundle, ONNX Runtime errors only; a missing or broken file is one InputError naming it."""
    if not (bundle / names.BUNDLE_MODEL).is_file():
        raise InputError(f"{bundle}: no {names.BUNDLE_MODEL}; re-export the bundle with `edge-lorax export`")
    try:
        config = og.Config(str(bundle))
        config.clear_providers()
        options = {"log_severity_level": 3, **({"intra_op_num_threads": threads} if threads else {})}  # 3: errors only
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        return og.Model(config)
    except RuntimeError as e:  # onnxruntime-genai raises RuntimeError for every load failure
        raise InputError(f"{bundle}: onnxruntime-genai cannot load it ({str(e).splitlines()[0][:160]}); re-export the "
                         "bundle with `edge-lorax export` (a missing or cut model.onnx.data or genai_config.json?)") from e


def task_choices(choices: str | None, user_path=None) -> tuple:
    """The label words of `--choices`: "A,B" as given, "auto" the user file's own labels (its __meta__ labels);
    () when None. InputError naming the file when "auto" finds none."""
    if not choices:
        return ()
    if choices != "auto":
        return tuple(c.strip() for c in choices.split(","))
    npz = user_path is not None and Path(user_path).suffix != names.ADAPTER_SUFFIX
    labels = read_user(user_path).meta.get("labels") if npz else None
    if not labels:
        raise InputError(f"{user_path or '--coeffs'}: no labels to ask with (--choices auto needs a user.npz trained on "
                         "a task); pass them, e.g. --choices ham,spam")
    return tuple(str(x) for x in labels)


def load_llm(bundle, threads: int | None = None) -> LLM:
    """Open a decoder bundle once (see LLM); InputError for anything else."""
    return LLM(bundle, threads)
