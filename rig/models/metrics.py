"""Model quality metrics, vectorised with numpy (shared by training, the promoter and benchmarks)."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from scipy.stats import rankdata

EPSILON = 1e-15


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties ranked by their mean).

    Raises:
        ValueError: when the labels hold only one class.
    """
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both classes among the labels")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss_per_row(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Log loss of each row, with probabilities clipped away from 0 and 1."""
    p = np.clip(np.asarray(probabilities, dtype=float), EPSILON, 1 - EPSILON)
    y = np.asarray(labels, dtype=float)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


class WindowMetrics(TypedDict):
    """One model's quality over a window (`window_metrics`), as `MetadataStore.record_model_metrics`
    takes it."""

    n: int
    mean_loss: float
    auc: float | None
    mean_score: float
    positive_rate: float


def window_metrics(labels: np.ndarray, scores: np.ndarray) -> WindowMetrics:
    """Quality of one model over a window of joined outcomes: n, mean log loss, AUC (None when the
    labels hold one class), mean score and positive rate."""
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    both = 0 < labels.sum() < labels.size
    return {
        "n": int(labels.size),
        "mean_loss": float(log_loss_per_row(labels, scores).mean()),
        "auc": roc_auc(labels, scores) if both else None,
        "mean_score": float(scores.mean()),
        "positive_rate": float(labels.mean()),
    }
