"""The synthetic world: deterministic, point-in-time correct, labels drawn from the known truth."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from rig.models.train import fit_booster
from sim import world as data
from sim.world import FEATURE_NAMES, FEATURE_SETS, INFORMATIVE_FEATURES, NOISE_FEATURES

START = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def world() -> data.World:
    return data.make_world(seed=11, n_entities=3_000, days=10, start=START)


@pytest.fixture(scope="module")
def small_world() -> data.World:
    return data.make_world(seed=5, n_entities=50, days=4, start=START)


def binomial_log_likelihood(labels: np.ndarray, probability: np.ndarray) -> float:
    return float(np.sum(labels * np.log(probability) + (1 - labels) * np.log1p(-probability)))


def test_same_seed_gives_identical_frames(small_world: data.World) -> None:
    again = data.make_world(seed=5, n_entities=50, days=4, start=START)
    pd.testing.assert_frame_equal(small_world.features, again.features)
    requests = data.make_requests(small_world, 200, seed=3)
    pd.testing.assert_frame_equal(requests, data.make_requests(again, 200, seed=3))
    pd.testing.assert_frame_equal(
        data.make_outcomes(small_world, requests, seed=4), data.make_outcomes(again, requests, seed=4)
    )
    pd.testing.assert_frame_equal(
        data.labelled_events(small_world, 300, seed=6), data.labelled_events(again, 300, seed=6)
    )


def test_different_seed_gives_different_frames(small_world: data.World) -> None:
    other = data.make_world(seed=6, n_entities=50, days=4, start=START)
    assert not np.allclose(
        small_world.features[list(FEATURE_NAMES)].fillna(-1), other.features[list(FEATURE_NAMES)].fillna(-1)
    )
    first = data.make_requests(small_world, 100, seed=1)
    second = data.make_requests(small_world, 100, seed=2)
    assert set(first["request_id"]).isdisjoint(second["request_id"])
    assert not first["entity_id"].equals(second["entity_id"])


def test_world_has_one_snapshot_per_entity_per_day(world: data.World) -> None:
    frame = world.features
    assert list(frame.columns) == ["entity_id", "event_timestamp", "created_timestamp", *FEATURE_NAMES]
    assert len(frame) == 3_000 * 10
    assert frame.groupby("entity_id").size().eq(10).all()
    assert frame["event_timestamp"].is_monotonic_increasing
    assert str(frame["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert (frame["created_timestamp"] >= frame["event_timestamp"]).all()
    assert frame["event_timestamp"].min() >= pd.Timestamp(START)
    assert frame["event_timestamp"].max() < pd.Timestamp(world.end)
    assert frame["entity_id"].str.fullmatch(r"ent-\d{6}").all()
    assert (frame[list(FEATURE_NAMES)].dtypes == np.float64).all()
    assert list(world.entity_ids[:2]) == ["ent-000000", "ent-000001"]


def test_features_evolve_and_have_realistic_shapes(world: data.World) -> None:
    frame = world.features
    per_entity_changes = frame.groupby("entity_id")["credit_utilization"].nunique()
    assert (per_entity_changes > 1).mean() > 0.9
    age_steps = frame.groupby("entity_id")["account_age_days"].diff().dropna()
    assert (age_steps == 1.0).all(), "accounts age one day per daily snapshot"
    amount = frame["txn_amount_mean_7d"]
    assert amount.mean() > 1.2 * amount.median(), "amounts are right-skewed"
    assert frame["declined_txn_ratio_7d"].between(0, 1).all()
    assert (frame["credit_utilization"] > 1).any(), "utilization sometimes exceeds the limit"
    assert (frame["chargeback_count_90d"] == 0).mean() > 0.6
    for name, rate in data.MISSING_RATES.items():
        assert frame[name].isna().mean() == pytest.approx(rate, abs=0.005)
    others = [name for name in FEATURE_NAMES if name not in data.MISSING_RATES]
    assert not frame[others].isna().any().any()


def test_feature_roles_partition_the_features() -> None:
    assert len(FEATURE_NAMES) == 16 == len(set(FEATURE_NAMES))
    assert set(INFORMATIVE_FEATURES) | set(NOISE_FEATURES) == set(FEATURE_NAMES)
    assert not set(INFORMATIVE_FEATURES) & set(NOISE_FEATURES)
    assert set(FEATURE_SETS["better"]) == set(FEATURE_NAMES)
    assert set(FEATURE_SETS["golden"]) == set(FEATURE_NAMES) - {"chargeback_count_90d"}
    assert not set(FEATURE_SETS["worse"]) & set(INFORMATIVE_FEATURES[:5])


def test_true_importance_ranks_informative_features_in_documented_order(world: data.World) -> None:
    importance = data.true_importance(world.features)
    assert tuple(importance.index[: len(INFORMATIVE_FEATURES)]) == INFORMATIVE_FEATURES
    assert (importance[list(NOISE_FEATURES)] == 0).all()
    assert importance[INFORMATIVE_FEATURES[-1]] > 0.05


def test_true_logit_ignores_noise_features(world: data.World) -> None:
    sample = world.features.sample(2_000, random_state=1)
    shuffled = sample.copy()
    rng = np.random.default_rng(0)
    for name in NOISE_FEATURES:
        shuffled[name] = rng.permutation(shuffled[name].to_numpy())
    np.testing.assert_array_equal(data.true_logit(sample), data.true_logit(shuffled))


def test_true_logit_has_an_interaction_and_a_threshold(world: data.World) -> None:
    row = world.features.iloc[[0]].copy()
    row["credit_utilization"] = 0.89
    below = data.true_logit(row)[0]
    row["credit_utilization"] = 0.91
    assert data.true_logit(row)[0] - below > 1.0, "a jump above utilization 0.9"

    def amount_effect(foreign_ratio: float) -> float:
        cheap, dear = row.copy(), row.copy()
        cheap["foreign_txn_ratio_30d"] = dear["foreign_txn_ratio_30d"] = foreign_ratio
        cheap["txn_amount_mean_7d"], dear["txn_amount_mean_7d"] = 20.0, 500.0
        return data.true_logit(dear)[0] - data.true_logit(cheap)[0]

    assert amount_effect(0.6) > amount_effect(0.0) + 1.0, "amount matters more for foreign spenders"


def test_as_of_lookup_takes_latest_snapshot_never_a_future_one(world: data.World) -> None:
    rng = np.random.default_rng(3)
    n = 2_000
    ids = world.entity_ids[rng.integers(0, world.n_entities, n)]
    times = pd.Timestamp(START) + pd.to_timedelta(rng.uniform(-0.5, 11, n), unit="D")
    found = data.as_of_features(world, ids, pd.Series(times))

    assert list(found["entity_id"]) == list(ids), "rows stay in input order"
    has_snapshot = found["snapshot_timestamp"].notna()
    assert (found.loc[has_snapshot, "snapshot_timestamp"] <= found.loc[has_snapshot, "event_time"]).all()

    snapshots = world.features.groupby("entity_id")["event_timestamp"].apply(np.array)
    expected = [
        stamps[stamps <= time].max() if (stamps <= time).any() else pd.NaT
        for stamps, time in zip(snapshots.loc[ids], found["event_time"], strict=True)
    ]
    pd.testing.assert_series_equal(
        found["snapshot_timestamp"], pd.Series(pd.to_datetime(expected, utc=True)), check_names=False
    )
    assert found.loc[~has_snapshot, list(FEATURE_NAMES)].isna().all().all()
    assert (~has_snapshot).sum() > 0, "some lookups fall before the entity's first snapshot"


def test_as_of_lookup_at_exact_snapshot_time_uses_that_snapshot(small_world: data.World) -> None:
    snapshot = small_world.features.iloc[[120]]
    found = data.as_of_features(small_world, snapshot["entity_id"], snapshot["event_timestamp"])
    np.testing.assert_array_equal(
        found[list(FEATURE_NAMES)].to_numpy(), snapshot[list(FEATURE_NAMES)].to_numpy()
    )
    earlier = data.as_of_features(
        small_world, snapshot["entity_id"], snapshot["event_timestamp"] - pd.Timedelta(microseconds=1)
    )
    assert earlier["snapshot_timestamp"].iloc[0] == snapshot["event_timestamp"].iloc[0] - pd.Timedelta(days=1)


def test_unknown_entity_has_no_features(small_world: data.World) -> None:
    found = data.as_of_features(small_world, ["ent-999999"], [small_world.end])
    assert found[list(FEATURE_NAMES)].isna().all().all()


def test_label_rate_matches_true_probability(world: data.World) -> None:
    events = data.labelled_events(world, 100_000, seed=21)
    features = data.as_of_features(world, events["entity_id"], events["event_timestamp"])
    probability = data.true_probability(features)
    binomial_std = np.sqrt(np.sum(probability * (1 - probability))) / len(events)
    assert abs(events["label"].mean() - probability.mean()) < 4 * binomial_std
    assert 0.05 < probability.mean() < 0.3
    deciles = pd.qcut(probability, 10, labels=False)
    by_decile = events["label"].groupby(deciles).mean()
    assert by_decile.iloc[-1] > 4 * by_decile.iloc[0]


def test_labels_follow_features_as_of_event_time_not_latest(world: data.World) -> None:
    events = data.labelled_events(world, 100_000, seed=22)
    as_of = data.as_of_features(world, events["entity_id"], events["event_timestamp"])
    latest = world.latest().set_index("entity_id").loc[events["entity_id"]]
    labels = events["label"].to_numpy()
    assert binomial_log_likelihood(labels, data.true_probability(as_of)) > binomial_log_likelihood(
        labels, data.true_probability(latest)
    )
    assert events["event_timestamp"].is_monotonic_increasing
    assert (as_of["snapshot_timestamp"].notna()).all(), "every event has a snapshot at or before it"


def test_drift_changes_true_probabilities_substantially(world: data.World) -> None:
    before = data.true_probability(world.features)
    after = data.true_probability(world.features, drifted=True)
    assert np.mean(np.abs(after - before)) > 0.08
    assert np.corrcoef(before, after)[0, 1] < 0.7
    assert after.mean() == pytest.approx(before.mean(), abs=0.03), "the base rate stays similar"


def test_labels_after_drift_at_follow_the_drifted_truth(world: data.World) -> None:
    drift_at = START + timedelta(days=5)
    events = data.labelled_events(world, 60_000, seed=23, drift_at=drift_at)
    features = data.as_of_features(world, events["entity_id"], events["event_timestamp"])
    late = (events["event_timestamp"] >= drift_at).to_numpy()
    labels = events["label"].to_numpy()
    for part, drifted_wins in ((late, True), (~late, False)):
        drifted = binomial_log_likelihood(labels[part], data.true_probability(features[part], True))
        stable = binomial_log_likelihood(labels[part], data.true_probability(features[part], False))
        assert (drifted > stable) is drifted_wins


def residual_logit_variance(features: pd.DataFrame, kept: tuple[str, ...]) -> float:
    """E[Var(true logit | kept features)], estimated by redrawing the other features.

    Informative features are drawn independently of each other and of the noise, so permuting the
    columns outside `kept` (jointly, across rows) draws them from their conditional distribution.
    """
    redrawn = features.copy()
    outside = [name for name in FEATURE_NAMES if name not in kept]
    order = np.random.default_rng(1).permutation(len(features))
    redrawn[outside] = features[outside].to_numpy()[order]
    return float(np.mean((data.true_logit(features) - data.true_logit(redrawn)) ** 2) / 2)


def test_better_feature_set_carries_information_golden_lacks(world: data.World) -> None:
    sample = world.features.sample(20_000, random_state=2).reset_index(drop=True)
    residual = {name: residual_logit_variance(sample, kept) for name, kept in FEATURE_SETS.items()}
    assert residual["better"] == 0.0, "the truth is a function of the better set"
    assert residual["golden"] > 0.2, "golden misses a strong effect"
    assert residual["worse"] > residual["golden"] + 0.5


def test_models_on_the_feature_sets_rank_better_golden_worse(world: data.World) -> None:
    events = data.labelled_events(world, 40_000, seed=24)
    features = data.as_of_features(world, events["entity_id"], events["event_timestamp"])
    frame = pd.concat([features, events[["label"]]], axis=1)
    train, test = frame.iloc[:30_000], frame.iloc[30_000:]
    labels = test["label"].to_numpy()
    loss = {}
    for name, columns in FEATURE_SETS.items():
        x_train = train[list(columns)].to_numpy(np.float32)
        booster = fit_booster(x_train, train["label"].to_numpy(), columns, params={"max_depth": 3})
        probability = booster.inplace_predict(test[list(columns)].to_numpy(np.float32))
        loss[name] = -binomial_log_likelihood(labels, probability) / len(probability)
    assert loss["better"] < loss["golden"] - 0.01 < loss["worse"] - 0.05


def test_requests_are_unique_ordered_and_skewed(world: data.World) -> None:
    start = START + timedelta(days=20)
    requests = data.make_requests(world, 50_000, seed=9, start=start, rate_per_s=500.0)
    assert list(requests.columns) == ["request_id", "entity_id", "event_time"]
    assert requests["request_id"].is_unique
    assert all(uuid.UUID(value).version == 4 for value in requests["request_id"].head(100))
    assert requests["event_time"].is_monotonic_increasing
    assert requests["event_time"].iloc[0] >= pd.Timestamp(start)
    span_s = (requests["event_time"].iloc[-1] - pd.Timestamp(start)).total_seconds()
    assert 50_000 / span_s == pytest.approx(500.0, rel=0.03)
    assert requests["entity_id"].isin(world.entity_ids).all()
    top_share = requests["entity_id"].value_counts().iloc[: world.n_entities // 100].sum() / len(requests)
    assert top_share > 0.1, "a few hot entities get a large share of the traffic"


def test_requests_start_after_the_world_by_default(small_world: data.World) -> None:
    requests = data.make_requests(small_world, 10, seed=1)
    assert requests["event_time"].min() >= pd.Timestamp(small_world.end)


def test_outcomes_are_delayed_labels_of_each_request(world: data.World) -> None:
    requests = data.make_requests(world, 20_000, seed=10, rate_per_s=200.0)
    outcomes = data.make_outcomes(world, requests, seed=11, delay_median_s=30.0)
    assert list(outcomes.columns) == ["request_id", "entity_id", "label", "event_time"]
    assert outcomes["event_time"].is_monotonic_increasing
    joined = requests.merge(outcomes, on="request_id", suffixes=("_request", "_outcome"), validate="1:1")
    assert len(joined) == len(requests)
    assert (joined["entity_id_request"] == joined["entity_id_outcome"]).all()
    delay_s = (joined["event_time_outcome"] - joined["event_time_request"]).dt.total_seconds()
    assert (delay_s > 0).all()
    assert delay_s.median() == pytest.approx(30.0, rel=0.05)
    assert delay_s.max() > 3 * delay_s.median(), "delays have a long tail"
    assert set(outcomes["label"].unique()) <= {0, 1}


def test_outcome_labels_use_drifted_truth_after_drift_at(world: data.World) -> None:
    requests = data.make_requests(world, 40_000, seed=12, rate_per_s=100.0)
    drift_at = requests["event_time"].iloc[20_000].to_pydatetime()
    outcomes = data.make_outcomes(world, requests, seed=13, drift_at=drift_at)
    joined = requests.merge(outcomes[["request_id", "label"]], on="request_id")
    features = data.as_of_features(world, joined["entity_id"], joined["event_time"])
    late = (joined["event_time"] >= drift_at).to_numpy()
    labels = joined["label"].to_numpy()[late]
    drifted = binomial_log_likelihood(labels, data.true_probability(features[late], True))
    stable = binomial_log_likelihood(labels, data.true_probability(features[late], False))
    assert drifted > stable


def test_outcomes_refuse_requests_before_the_world_began(small_world: data.World) -> None:
    requests = data.make_requests(small_world, 5, seed=1, start=START - timedelta(days=1))
    with pytest.raises(ValueError, match="no feature snapshot"):
        data.make_outcomes(small_world, requests, seed=1)


def test_offline_store_parquet_round_trips(small_world: data.World, tmp_path) -> None:
    path = data.write_offline_store(small_world, tmp_path / "data")
    assert path == tmp_path / "data" / data.OFFLINE_STORE_FILE
    written = pd.read_parquet(path)
    expected = small_world.features.copy()
    for column in ("event_timestamp", "created_timestamp"):
        expected[column] = expected[column].dt.as_unit("us")
    pd.testing.assert_frame_equal(written, expected)


def test_latest_is_the_last_snapshot_of_every_entity(small_world: data.World) -> None:
    latest = small_world.latest()
    assert list(latest["entity_id"]) == list(small_world.entity_ids)
    last_day = pd.Timestamp(START) + pd.Timedelta(days=small_world.days - 1)
    assert (latest["event_timestamp"] >= last_day).all()


def test_invalid_arguments_are_refused(small_world: data.World) -> None:
    with pytest.raises(ValueError):
        data.make_world(seed=1, n_entities=0, days=3)
    with pytest.raises(ValueError):
        data.make_requests(small_world, 10, seed=1, rate_per_s=0)
    with pytest.raises(ValueError):
        data.as_of_features(small_world, ["ent-000001"], [START, START])


def test_outcome_records_keep_the_frames_order_labels_and_times_in_epoch_ms() -> None:
    frame = pd.DataFrame(
        {
            "request_id": ["r2", "r1"],
            "entity_id": ["e2", "e1"],
            "label": np.array([1, 0], dtype=np.int64),
            "event_time": pd.to_datetime(
                ["2024-06-10T06:13:20.123456Z", "2024-06-10T06:13:21.000000Z"], utc=True
            ),
        }
    )
    records = data.outcome_records(frame)
    assert [(o.request_id, o.entity_id, o.label, o.event_time) for o in records] == [
        ("r2", "e2", 1, 1_718_000_000_123),
        ("r1", "e1", 0, 1_718_000_001_000),
    ]
