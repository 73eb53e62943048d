"""tokenizer_config.json that both transformers lines load: transformers 5 saves `"tokenizer_class":
"TokenizersBackend"`, which transformers 4.57's AutoTokenizer refuses; `PreTrainedTokenizerFast` is known to both and
reads tokenizer.json as it is (onnxruntime-genai 0.18 tokenizes the same with either, checked on SmolLM2). Does not
touch tokenizer.json or any other file.
"""

import json
from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.jsonfile import read_json_object

PORTABLE_CLASS = "PreTrainedTokenizerFast"
DECODER_INPUTS = (names.INPUT_IDS, names.ATTENTION_MASK)  # a decoder graph's token inputs: no token_type_ids


def make_portable(file: Path, input_names: tuple = DECODER_INPUTS) -> bool:
    """Rewrite `file` (a JSON object, else InputError naming it) with tokenizer_class PORTABLE_CLASS and
    model_input_names `input_names`, only when they differ; True when it was rewritten."""
    config = read_json_object(file, "fix the model folder's tokenizer_config.json")
    want = {"tokenizer_class": PORTABLE_CLASS, "model_input_names": list(input_names)}
    if all(config.get(k) == v for k, v in want.items()):
        return False
    Path(file).write_text(json.dumps({**config, **want}, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return True
