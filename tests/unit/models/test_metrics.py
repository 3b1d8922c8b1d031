"""Metrics agree with their definitions."""

import numpy as np
import pytest

from rig.models.metrics import log_loss_per_row, roc_auc


def test_auc_equals_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=200)
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # rounding creates ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(labels, scores) == pytest.approx(pairwise, abs=1e-12)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(5), np.arange(5))


def test_log_loss_matches_formula_and_stays_finite_at_the_edges() -> None:
    losses = log_loss_per_row(np.array([1, 0, 1, 0]), np.array([0.8, 0.8, 0.0, 1.0]))
    assert losses[0] == pytest.approx(-np.log(0.8))
    assert losses[1] == pytest.approx(-np.log(0.2))
    assert np.all(np.isfinite(losses)) and losses[2] > 30
