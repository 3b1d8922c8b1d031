"""Explainer: SHAP sums to the margin, anchors hold on fresh samples, counterfactuals really flip."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xgboost

from rig.config import RigSettings
from rig.errors import ExplainerError
from rig.explain import anchors
from rig.explain.anchors import Anchor, Condition, distinct_rows
from rig.explain.explainer import Explainer, ExplainerOptions, explanation_key
from rig.models.train import fit_booster, load_transform_spec, model_matrix
from rig.transform.fitted import fit
from rig.transform.model_inputs import model_columns
from sim.world import (
    FEATURE_NAMES,
    NOISE_FEATURES,
    STRONG_FEATURES,
    as_of_features,
    labelled_events,
    make_world,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
N_TRAIN = 4800
MUTABLE = ("txn_amount_mean_7d", "declined_txn_ratio_7d", "foreign_txn_ratio_30d", "credit_utilization")


@dataclass(frozen=True)
class Trained:
    booster: xgboost.Booster
    features: tuple[str, ...]
    reference: np.ndarray  # training matrix
    held_out: np.ndarray
    explainer: Explainer

    @property
    def scores(self) -> np.ndarray:
        return self.booster.inplace_predict(self.held_out)


@pytest.fixture(scope="module")
def trained() -> Trained:
    """A small model on the synthetic world, through the deployment's transform
    (examples/synthetic_world/transform.json)."""
    world = make_world(seed=11, n_entities=1200, days=8)
    events = labelled_events(world, 6000, seed=12)
    frame = as_of_features(world, events["entity_id"], events["event_timestamp"])
    settings = RigSettings()
    settings = settings.model_copy(update={"transform_spec": REPO_ROOT / settings.transform_spec})
    transform = fit(load_transform_spec(settings), frame.iloc[:N_TRAIN])
    features = model_columns(transform.output_columns, FEATURE_NAMES)
    x, ok = model_matrix(transform, frame, features)
    assert ok.all()
    labels = events["label"].to_numpy()
    booster = fit_booster(
        x[:N_TRAIN], labels[:N_TRAIN], features, rounds=60, params={"max_depth": 4, "seed": 0}
    )
    reference = x[:N_TRAIN]
    return Trained(booster, features, reference, x[N_TRAIN:], Explainer(booster, features, reference, seed=5))


def rows_by_decision(trained: Trained, positive: bool, n: int, min_distance: float = 0.0) -> np.ndarray:
    """Indices of held-out rows with the given decision, at least `min_distance` from the threshold."""
    scores = trained.scores
    chosen = (scores >= 0.5) == positive
    chosen &= np.abs(scores - 0.5) >= min_distance
    return np.flatnonzero(chosen)[:n]


def independent_precision(trained: Trained, row: np.ndarray, anchor: Anchor, n: int, seed: int) -> float:
    """The anchor's precision by a sampler written here: a random reference row, and each anchored
    feature that breaks its condition replaced by a random reference value that satisfies it."""
    rng = np.random.default_rng(seed)
    reference = trained.reference.astype(np.float64)
    samples = reference[rng.integers(0, len(reference), n)]
    for condition in anchor.conditions:
        j = trained.features.index(condition.feature)
        column = reference[:, j]
        lower = -np.inf if condition.lower is None else condition.lower
        upper = np.inf if condition.upper is None else condition.upper
        good = column[(column > lower) & (column <= upper)]
        broken = ~((samples[:, j] > lower) & (samples[:, j] <= upper))
        samples[broken, j] = rng.choice(good, size=broken.sum())
    decision = trained.booster.inplace_predict(row[None])[0] >= 0.5
    return float(np.mean((trained.booster.inplace_predict(samples.astype(np.float32)) >= 0.5) == decision))


# -- SHAP ---------------------------------------------------------------------------------------------
def test_shap_contributions_plus_bias_sum_to_the_margin_of_every_row(trained: Trained) -> None:
    explanations = trained.explainer.shap(trained.held_out)
    matrix = xgboost.DMatrix(trained.held_out, feature_names=list(trained.features))
    margins = trained.booster.predict(matrix, output_margin=True)
    assert len(explanations) == len(trained.held_out)
    totals = np.array([e.bias + sum(e.contributions) for e in explanations])
    np.testing.assert_allclose(totals, margins, atol=1e-4, rtol=0)
    np.testing.assert_allclose([e.margin for e in explanations], margins, atol=1e-6, rtol=0)
    np.testing.assert_allclose([e.score for e in explanations], trained.scores, atol=1e-6, rtol=0)


def test_top_contributions_are_the_largest_by_absolute_value_with_sign_and_row_value(
    trained: Trained,
) -> None:
    rows = trained.held_out[:50]
    for row, explanation in zip(rows, trained.explainer.shap(rows), strict=True):
        contributions = np.array(explanation.contributions)
        expected = np.argsort(-np.abs(contributions), kind="stable")[:5]
        assert [c.feature for c in explanation.top] == [trained.features[j] for j in expected]
        assert [c.contribution for c in explanation.top] == pytest.approx(contributions[expected].tolist())
        assert [c.value for c in explanation.top] == pytest.approx(row[expected].tolist())


def test_truly_strong_features_rank_on_top_by_mean_absolute_shap(trained: Trained) -> None:
    explanations = trained.explainer.shap(trained.held_out)
    mean_abs = np.abs(np.array([e.contributions for e in explanations])).mean(axis=0)
    # A raw feature's importance: the sum over the model columns derived from it (value, bucket, flag).
    importance = {
        raw: sum(mean_abs[trained.features.index(col)] for col in model_columns(trained.features, [raw]))
        for raw in FEATURE_NAMES
    }
    ranked = sorted(importance, key=importance.__getitem__, reverse=True)
    assert set(ranked[:3]) == set(STRONG_FEATURES), ranked
    weakest_strong = min(importance[f] for f in STRONG_FEATURES)
    assert weakest_strong > 1.3 * importance[ranked[3]]
    assert weakest_strong > 3 * max(importance[f] for f in NOISE_FEATURES)


# -- anchors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("positive", "position"), [(False, 0), (False, 1), (False, 2), (True, 0), (True, 1)])
def test_anchor_precision_holds_on_fresh_samples_and_coverage_is_the_reference_share(
    trained: Trained, positive: bool, position: int
) -> None:
    row = trained.held_out[rows_by_decision(trained, positive, 3, min_distance=0.3)[position]]
    anchor = trained.explainer.anchor(row)
    target = trained.explainer.options.precision_target
    assert anchor.decision == positive
    assert anchor.met_target and anchor.precision >= target and anchor.conditions
    assert 0 < anchor.precision_lower < anchor.precision
    for condition in anchor.conditions:
        assert condition.holds(row[[trained.features.index(condition.feature)]])[0], str(condition)
    fresh = trained.explainer.anchor_precision(row, anchor, n_samples=4000, seed=12345)
    assert fresh >= target - 0.03 and abs(fresh - anchor.precision) <= 0.03
    assert independent_precision(trained, row, anchor, n=4000, seed=777) >= target - 0.03
    holds = np.ones(len(trained.reference), dtype=bool)
    for c in anchor.conditions:
        column = trained.reference[:, trained.features.index(c.feature)].astype(np.float64)
        holds &= (column > (c.lower if c.lower is not None else -np.inf)) & (
            column <= (c.upper if c.upper is not None else np.inf)
        )
    assert anchor.coverage == pytest.approx(holds.mean())
    assert anchor.rule == " AND ".join(str(c) for c in anchor.conditions)


def test_anchor_is_deterministic_given_the_seed(trained: Trained) -> None:
    row = trained.held_out[rows_by_decision(trained, True, 1, min_distance=0.3)[0]]
    first = Explainer(trained.booster, trained.features, trained.reference, seed=42).anchor(row)
    again = Explainer(trained.booster, trained.features, trained.reference, seed=42).anchor(row)
    assert first == again and first.conditions


def test_anchor_reports_an_unmet_target_instead_of_overstating_precision(trained: Trained) -> None:
    # A borderline positive row cannot be pinned by one condition: the result must say so.
    scores = trained.scores
    row = trained.held_out[int(np.argmin(np.where(scores >= 0.5, scores, np.inf)))]
    options = ExplainerOptions(max_anchor_size=1)
    explainer = Explainer(trained.booster, trained.features, trained.reference, seed=5, options=options)
    anchor = explainer.anchor(row)
    assert not anchor.met_target and len(anchor.conditions) <= 1
    assert anchor.precision < options.precision_target
    assert explainer.anchor_precision(row, anchor, n_samples=4000, seed=9) < options.precision_target


def test_anchor_predicting_only_distinct_rows_equals_predicting_every_row(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = trained.held_out[rows_by_decision(trained, True, 2, min_distance=0.2)]
    explainer = Explainer(trained.booster, trained.features, trained.reference, seed=3)
    distinct = [explainer.anchor(row) for row in rows]
    monkeypatch.setattr(anchors, "distinct_rows", lambda m: (m, np.arange(m.shape[0])))
    assert [explainer.anchor(row) for row in rows] == distinct


def bits(matrix: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(matrix, dtype=np.float32).view(np.uint32)


def test_distinct_rows_groups_rows_with_equal_bits() -> None:
    nan = np.nan
    matrix = np.array(
        [[1, 2, 0], [nan, 0, 2], [1, 2, 0], [nan, 2, 0], [nan, 0, 2], [-0.0, 2, 0], [0, 2, 0]],
        dtype=np.float32,
    )  # odd width, NaN, values swapped between columns, -0.0 beside 0.0
    rows, inverse = distinct_rows(matrix)
    assert np.array_equal(bits(rows)[inverse], bits(matrix))
    assert len({r.tobytes() for r in bits(rows)}) == rows.shape[0] == 5
    assert inverse.tolist() == [0, 1, 0, 2, 1, 3, 4]


def test_distinct_rows_keeps_every_row_when_two_distinct_rows_share_a_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without mixing, unit weights hash a row to the sum of its words: swapping two words collides.
    monkeypatch.setattr(anchors, "_mix", lambda words: words)
    monkeypatch.setattr(anchors, "_ROW_HASH", np.ones(8, dtype=np.uint64))
    matrix = np.array([[1, 2, 3, 4], [3, 4, 1, 2], [1, 2, 3, 4]], dtype=np.float32)
    rows, inverse = distinct_rows(matrix)
    assert np.array_equal(rows, matrix) and inverse.tolist() == [0, 1, 2]


def test_missing_condition_holds_only_on_missing_values() -> None:
    values = np.array([np.nan, 0.0, 1.0, 2.0])
    assert Condition("f", missing=True).holds(values).tolist() == [True, False, False, False]
    assert Condition("f", 0.0, 1.0).holds(values).tolist() == [False, False, True, False]
    assert str(Condition("f", 0.0, 1.0)) == "0 < f <= 1" and str(Condition("f", None, 2.0)) == "f <= 2"


# -- counterfactuals ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("positive", "position"), [(True, 0), (True, 1), (True, 2), (False, 0), (False, 1)])
def test_counterfactual_flips_the_decision_when_re_predicted_and_changes_only_allowed_features(
    trained: Trained, positive: bool, position: int
) -> None:
    explainer = Explainer(trained.booster, trained.features, trained.reference, mutable=MUTABLE)
    row = trained.held_out[rows_by_decision(trained, positive, 3, min_distance=0.1)[position]]
    counterfactual = explainer.counterfactual(row)
    assert counterfactual is not None
    changed = row.copy()
    for change in counterfactual.changes:
        j = trained.features.index(change.feature)
        assert change.feature in MUTABLE
        assert change.from_value == row[j] and change.to_value != row[j]
        changed[j] = change.to_value
    assert 1 <= len(counterfactual.changes) <= explainer.options.max_changes
    score = float(trained.booster.inplace_predict(changed[None])[0])
    assert (score >= 0.5) != positive and counterfactual.decision == (not positive)
    assert counterfactual.score == pytest.approx(score, abs=1e-6)
    assert counterfactual.original_score == pytest.approx(
        float(trained.booster.inplace_predict(row[None])[0])
    )
    scale = np.subtract(*np.quantile(trained.reference.astype(np.float64), [0.75, 0.25], axis=0))
    expected = sum(
        abs(c.to_value - c.from_value) / scale[trained.features.index(c.feature)]
        for c in counterfactual.changes
    )
    assert counterfactual.distance == pytest.approx(expected, rel=1e-5)


def test_single_change_counterfactual_is_the_nearest_flipping_reference_quantile(trained: Trained) -> None:
    # The documented search space: each mutable feature set to one of 50 reference quantiles (1 %..99 %).
    explainer = Explainer(trained.booster, trained.features, trained.reference, mutable=MUTABLE)
    reference = trained.reference.astype(np.float64)
    scale = np.subtract(*np.quantile(reference, [0.75, 0.25], axis=0))
    grid = np.quantile(trained.reference, np.linspace(0.01, 0.99, 50), axis=0, method="lower")
    near = np.flatnonzero(np.abs(trained.scores - 0.5) < 0.08)[:4]
    assert len(near) == 4
    for row in trained.held_out[near]:
        decision = trained.booster.inplace_predict(row[None])[0] >= 0.5
        nearest = np.inf
        for name in MUTABLE:
            j = trained.features.index(name)
            trials = np.repeat(row[None], grid.shape[0], axis=0)
            trials[:, j] = grid[:, j]
            flips = (trained.booster.inplace_predict(trials) >= 0.5) != decision
            if flips.any():
                nearest = min(nearest, float(np.min(np.abs(grid[flips, j] - row[j]) / scale[j])))
        counterfactual = explainer.counterfactual(row)
        assert np.isfinite(nearest) and counterfactual is not None
        assert len(counterfactual.changes) == 1
        assert counterfactual.distance == pytest.approx(nearest, rel=1e-5)


def test_counterfactual_is_none_and_explained_when_no_allowed_change_can_flip(trained: Trained) -> None:
    row = trained.held_out[int(np.argmax(trained.scores))]
    explainer = Explainer(
        trained.booster, trained.features, trained.reference, mutable=("support_tickets_30d",)
    )
    assert explainer.counterfactual(row) is None
    explanation = explainer.explain(row)
    assert explanation.counterfactual is None
    assert (
        "support_tickets_30d" in explanation.counterfactual_note
        and "no change" in explanation.counterfactual_note
    )


# -- the whole explanation, keys, validation -------------------------------------------------------------
def test_explain_gives_all_three_parts_and_a_json_round_trip(trained: Trained) -> None:
    explainer = Explainer(trained.booster, trained.features, trained.reference, mutable=MUTABLE)
    row = trained.held_out[rows_by_decision(trained, True, 1, min_distance=0.2)[0]]
    explanation = explainer.explain(row)
    assert explanation.decision and explanation.anchor.decision
    assert explanation.score == pytest.approx(float(trained.booster.inplace_predict(row[None])[0]), abs=1e-6)
    assert explanation.counterfactual is not None and explanation.counterfactual_note == ""
    data = json.loads(explanation.to_json())
    assert data == explanation.to_dict()
    assert data["anchor"]["rule"] == explanation.anchor.rule
    assert len(data["shap"]["top"]) == 5 and set(data["shap"]["contributions"]) == set(trained.features)
    assert data["counterfactual"]["changes"][0]["feature"] in MUTABLE


def test_rows_with_missing_values_explain_and_serialise_on_a_raw_feature_model() -> None:
    world = make_world(seed=3, n_entities=400, days=6)
    events = labelled_events(world, 3000, seed=4)
    frame = as_of_features(world, events["entity_id"], events["event_timestamp"])
    x = frame[list(FEATURE_NAMES)].to_numpy(np.float32)
    booster = fit_booster(x, events["label"].to_numpy(), FEATURE_NAMES, rounds=30, params={"max_depth": 3})
    explainer = Explainer(booster, FEATURE_NAMES, x)
    row = x[int(np.flatnonzero(np.isnan(x).any(axis=1))[0])]
    explanation = explainer.explain(row)
    margin = booster.predict(
        xgboost.DMatrix(row[None], feature_names=list(FEATURE_NAMES)), output_margin=True
    )
    assert explanation.shap.bias + sum(explanation.shap.contributions) == pytest.approx(
        float(margin[0]), abs=1e-4
    )
    data = json.loads(explanation.to_json())  # allow_nan=False: a missing value must become null
    missing = [FEATURE_NAMES[j] for j in np.flatnonzero(np.isnan(row))]
    top_values = {item["feature"]: item["value"] for item in data["shap"]["top"]}
    assert all(top_values[name] is None for name in missing if name in top_values)
    for condition in explanation.anchor.conditions:
        assert condition.missing == (condition.feature in missing)


def test_explanation_key_is_stable_and_changes_with_version_or_row() -> None:
    row = np.array([0.0, 1.5, np.nan, 3.25], dtype=np.float64)
    key = explanation_key("risk-v1", row)
    assert key == explanation_key("risk-v1", row.astype(np.float32)) == explanation_key("risk-v1", row[None])
    assert key == explanation_key("risk-v1", np.array([-0.0, 1.5, -np.nan, 3.25]))
    assert key == "c1095c8f268589ebbd217ad7699e90d44ff6f8374fc38b018e73cb5b1fc70ac3"  # pinned format
    assert explanation_key("risk-v2", row) != key
    nudged = row.astype(np.float32)
    nudged[1] = np.nextafter(nudged[1], np.float32(2))
    assert explanation_key("risk-v1", nudged) != key


def test_explainer_rejects_inconsistent_inputs(trained: Trained) -> None:
    booster, features, reference = trained.booster, trained.features, trained.reference
    with pytest.raises(ExplainerError, match="no_such_feature"):
        Explainer(booster, features, reference, mutable=("no_such_feature",))
    with pytest.raises(ExplainerError, match="reference"):
        Explainer(booster, features, reference[:, :3])
    with pytest.raises(ExplainerError, match="threshold"):
        Explainer(booster, features, reference, threshold=1.0)
    with pytest.raises(ExplainerError, match="booster reads"):
        Explainer(booster, features[:-1], reference[:, :-1])
    with pytest.raises(ExplainerError, match="values"):
        trained.explainer.anchor(reference[0, :-1])
    with pytest.raises(ExplainerError, match="infinite"):
        trained.explainer.counterfactual(np.where(np.arange(len(features)) == 0, np.inf, reference[0]))
    assert math.isfinite(trained.explainer.shap(reference[0])[0].margin)
