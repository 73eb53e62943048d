"""A task head fitted in closed form on a bundle's `head_input` features, in numpy: what a device can afford.

Classification: multinomial logistic regression with an L2 penalty by Newton's method (scikit-learn's
LogisticRegression default C = 1, i.e. λ = 1 on the summed loss; for two classes on the one logistic weight, as
there); regression: ridge (λ = 1). Both on standardised features, returned in the user file's head layout
(`head.weight_t` (in, L), `head.bias` (L,)) for the raw features, so the graph's MatMul + Add computes the same
logits. Does not choose λ (its caller does, on held-out rows), weigh classes or run a model.
"""

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.tasks import CLASSIFICATION

L2 = 1.0
NEWTON_STEPS = 25


def _standardise(x: np.ndarray) -> tuple:
    mu, sd = x.mean(0), x.std(0) + 1e-6  # (d,), (d,)
    return (x - mu) / sd, mu, sd


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _logistic(z: np.ndarray, y: np.ndarray, labels: int, l2: float) -> np.ndarray:
    """Newton's method on the L2-penalised multinomial log-loss; returns W (d + 1, L), the last row the bias."""
    n, d = z.shape
    z1 = np.hstack([z, np.ones((n, 1))])  # (n, d + 1)
    onehot = np.eye(labels)[y]  # (n, L)
    # float even for an int λ (an int array made the bias's 1e-4 a 0: a singular Hessian); two softmax rows split
    # one logistic weight: the same penalty
    reg = np.full(d + 1, 2 * l2 if labels == 2 else l2, dtype=np.float64)
    reg[-1] = 1e-4  # the bias barely penalised (enough to pin the softmax's shift freedom)
    w = np.zeros((d + 1, labels))
    for _ in range(NEWTON_STEPS):
        p = _softmax(z1 @ w)  # (n, L)
        grad = (z1.T @ (p - onehot) + reg[:, None] * w).ravel(order="F")  # class-major blocks
        hess = np.empty((labels * (d + 1), labels * (d + 1)))
        for a in range(labels):
            for b in range(labels):
                s = p[:, a] * ((a == b) - p[:, b])  # (n,)
                hess[a * (d + 1):(a + 1) * (d + 1), b * (d + 1):(b + 1) * (d + 1)] = (z1 * s[:, None]).T @ z1
        hess += np.diag(np.tile(reg, labels))
        step = np.linalg.solve(hess, grad)
        w -= step.reshape((d + 1, labels), order="F")
        if np.abs(step).max() < 1e-6:
            break
    return w


def _ridge(z: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Ridge on centred targets; returns W (d + 1, 1), the last row the bias (the targets' mean)."""
    mean = float(y.mean())
    w = np.linalg.solve(z.T @ z + l2 * np.eye(z.shape[1]), z.T @ (y - mean))  # (d,)
    return np.concatenate([w, [mean]])[:, None]


def fit_head(x: np.ndarray, y: np.ndarray, kind: str, labels: int, l2: float = L2) -> dict:
    """x (n, in) float features, y (n,) int64 class indices or float targets -> {head.weight_t (in, L), head.bias (L,)}
    float32 for the raw features; L = labels (1 for regression); l2: the penalty λ."""
    z, mu, sd = _standardise(np.asarray(x, np.float64))
    w = _logistic(z, np.asarray(y), labels, l2) if kind == CLASSIFICATION else _ridge(z, np.asarray(y, np.float64), l2)
    weight = w[:-1] / sd[:, None]  # (in, L)
    bias = w[-1] - mu @ weight  # (L,)
    return {names.HEAD_WEIGHT_T: weight.astype(np.float32), names.HEAD_BIAS: bias.astype(np.float32)}


def head_logits(x: np.ndarray, head: dict) -> np.ndarray:
    """(n, in) features -> (n, L) logits, as the graph's head computes them."""
    return np.asarray(x, np.float64) @ head[names.HEAD_WEIGHT_T] + head[names.HEAD_BIAS]


def head_loss(x: np.ndarray, y: np.ndarray, head: dict, kind: str) -> float:
    """Mean cross-entropy (classification) or mean squared error (regression) of the head on (x, y)."""
    out = head_logits(x, head)
    if kind != CLASSIFICATION:
        return float(np.mean((out[:, 0] - y) ** 2))
    out = out - out.max(axis=1, keepdims=True)
    logp = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def head_score(x: np.ndarray, y: np.ndarray, head: dict, kind: str) -> float:
    """Accuracy (classification) or negative mean squared error (regression): higher is better."""
    out = head_logits(x, head)
    if kind != CLASSIFICATION:
        return -float(np.mean((out[:, 0] - y) ** 2))
    return float(np.mean(out.argmax(axis=1) == y))
