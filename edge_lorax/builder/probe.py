"""Head-only baseline as a linear probe: logistic regression fitted to convergence on frozen base-model features.

`pooled_features(model_path, texts)` runs the frozen base model (`AutoModel`: an encoder such as MiniLM, or the
decoder stack of a causal LM such as SmolLM2) and mean-pools its last hidden state over the attention mask, one
float32 row per text. `fit_probe(task, model_path)` fits scikit-learn's `LogisticRegression` (L-BFGS, multinomial,
standardised features) on the training split's features for each C of a small grid, picks the C with the best
validation accuracy (ties: the smaller C, i.e. the stronger regularisation) and reports validation and test accuracy
of every C and of the pick.

What it does not do: fine-tune anything, use the model's own pooler or [CLS] token (the trained head-only baseline in
`builder.baselines` sees BERT's pooler output instead), handle regression tasks, or write a user file (the probe's
weights live on standardised mean-pooled features, not on the graph's head input).
"""

from pathlib import Path

import numpy as np

from edge_lorax.builder.data import CLASSIFICATION, Task
from edge_lorax.formats.errors import InputError

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse L2 strength; picked on the validation split
MAX_ITER = 5000  # L-BFGS iterations; a C whose fit stops short of convergence is recorded and never picked


def load_encoder(model_path: Path):
    """(model, tokenizer): the bare base model (no head) in eval mode, right padding, a pad token (EOS for a decoder)."""
    import transformers
    from transformers import AutoModel

    from edge_lorax.builder.models import load_tokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = AutoModel.from_pretrained(model_path, use_safetensors=True).eval()
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def pooled_features(model_path, texts, max_length: int = 64, batch_size: int = 64, loaded=None) -> np.ndarray:
    """Mean of the last hidden state over each text's real tokens: (N, hidden) float32, in the order of `texts`.

    Texts are truncated to max_length tokens and batched by length (less padding); `loaded` = (model, tokenizer)
    from `load_encoder` skips loading."""
    import torch

    texts = list(texts)
    model, tokenizer = loaded or load_encoder(Path(model_path))
    order = np.argsort([len(t) for t in texts], kind="stable")
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start:start + batch_size]]
            enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            mask = enc["attention_mask"]  # (B, T)
            out = model(input_ids=enc["input_ids"], attention_mask=mask, output_hidden_states=True)
            hidden = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out.hidden_states[-1]
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, hidden)
            rows.append(pooled.float().numpy())
    features = np.concatenate(rows) if rows else np.zeros((0, model.config.hidden_size), np.float32)
    result = np.empty_like(features)
    result[order] = features
    return result


def fit_features(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 test_x: np.ndarray | None = None, test_y: np.ndarray | None = None, c_grid=C_GRID) -> dict:
    """Logistic regression per C on (N, hidden) features; the C with the best validation accuracy is the pick.

    Returns {"c": pick, "validation_accuracy", "test_accuracy", "test_macro_f1" (None without a test split), "grid":
    [{"c", "validation_accuracy", "test_accuracy", "test_macro_f1", "iterations", "converged"}], "c_grid"};
    accuracies are fractions. Only converged fits are picked."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise InputError("the probe needs at least two classes among the training rows")
    if not len(val_y):
        raise InputError("the probe picks C on the validation split, which is empty; give the task validation rows")
    grid = []
    for c in sorted(c_grid):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)  # "fitted to convergence" is checked, not assumed
            probe.fit(train_x, train_y)
        has_test = test_x is not None and len(test_y) > 0
        test = float(probe.score(test_x, test_y)) if has_test else None
        f1 = float(f1_score(test_y, probe.predict(test_x), average="macro")) if has_test else None
        grid.append({"c": c, "validation_accuracy": float(probe.score(val_x, val_y)), "test_accuracy": test,
                     "test_macro_f1": f1,
                     "iterations": int(np.max(probe[-1].n_iter_)),
                     "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught)})
    converged = [g for g in grid if g["converged"]]
    if not converged:
        raise InputError(f"the probe did not converge in {MAX_ITER} L-BFGS iterations for any C in {sorted(c_grid)}")
    best = max(converged, key=lambda g: g["validation_accuracy"])  # first maximum: the smallest C among ties
    return {"c": best["c"], "validation_accuracy": best["validation_accuracy"], "test_accuracy": best["test_accuracy"],
            "test_macro_f1": best["test_macro_f1"], "grid": grid, "c_grid": sorted(c_grid)}


def fit_probe(task: Task, model_path, max_length: int = 64, batch_size: int = 64, c_grid=C_GRID, loaded=None) -> dict:
    """Features of the task's three splits from the frozen base model, then `fit_features`; adds "features" (hidden
    size) and "rows" per split to its result. Classification tasks only."""
    if task.kind != CLASSIFICATION:
        raise InputError(f"{task.name}: the probe is a classifier; {task.kind} tasks are not supported")
    loaded = loaded or load_encoder(Path(model_path))
    x = {s: pooled_features(model_path, task.split(s).texts, max_length, batch_size, loaded)
         for s in ("train", "validation", "test")}
    y = {s: np.asarray(task.split(s).targets) for s in x}
    result = fit_features(x["train"], y["train"], x["validation"], y["validation"], x["test"], y["test"], c_grid)
    return {**result, "features": int(x["train"].shape[1]), "rows": {s: int(len(v)) for s, v in y.items()}}
