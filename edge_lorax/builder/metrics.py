"""Scores both training objectives share (builder.loop's Classification, builder.generative's Generation), in numpy.

Does not compute losses (those need the model's outputs in torch: builder.loop.task_loss) or choose a primary metric.
"""

import numpy as np


def macro_f1(pred: np.ndarray, targets: np.ndarray, classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in targets or predictions."""
    scores = []
    for c in range(classes):
        tp, fp, fn = np.sum((pred == c) & (targets == c)), np.sum((pred == c) & (targets != c)), np.sum((pred != c) & (targets == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))
