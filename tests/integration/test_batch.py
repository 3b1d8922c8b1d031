"""Batch prediction over the Feast offline store gives the online path's scores on point-in-time features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rig.config import RigSettings
from rig.errors import BatchInputError, RegistryError
from rig.features.store import FeatureStoreClient
from rig.models.batch import NOT_FOUND_REASON, predict_batch_frame, run_batch, score_column
from rig.models.registry import ModelRegistry
from rig.models.train import train_and_register
from rig.transform.model_inputs import column_index
from sim.deploy import world_training_frame, write_world
from sim.settings import WorldSettings
from sim.world import FEATURE_NAMES, FEATURE_SETS, World, as_of_features
from tests.integration.conftest import isolated_feast_settings

pytestmark = pytest.mark.integration

HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)
CHALLENGER_REJECTS = "log1p(session_z): negative value"


@dataclass(frozen=True)
class Deployment:
    """A world in the Feast offline store and two stored models on two different transforms."""

    settings: RigSettings
    world: World
    golden: str
    challenger: str


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    root = tmp_path_factory.mktemp("batch")
    settings = isolated_feast_settings(root)
    settings = settings.model_copy(update={"transform_spec": settings.feast_repo / "transform.json"})
    world = write_world(settings, WorldSettings(seed=5, entities=300, days=6))
    client = FeatureStoreClient(settings)
    client.apply()
    frame = world_training_frame(world, client.historical, n_events=3_000, seed=3)
    golden = train_and_register(settings, frame, FEATURE_SETS["golden"], name="risk", rounds=30)
    # The challenger's transform (another version) also rejects every row whose session length is
    # below the training mean: a log1p of the standardized value, computed but not output.
    spec = json.loads(settings.transform_spec.read_text())
    spec["steps"] += [
        {"op": "standardize", "column": "session_length_mean_s", "output": "session_z"},
        {"op": "log1p", "column": "session_z"},
    ]
    challenger_spec = root / "challenger-transform.json"
    challenger_spec.write_text(json.dumps(spec))
    challenger = train_and_register(
        settings.model_copy(update={"transform_spec": challenger_spec}),
        frame,
        FEATURE_SETS["better"],
        name="better",
        rounds=30,
    )
    return Deployment(settings, world, golden.meta.version, challenger.meta.version)


def transform_version(deployment: Deployment, version: str) -> str:
    return ModelRegistry(deployment.settings.model_dir).meta(version).transform_version


def expected_scores(
    deployment: Deployment, version: str, table: pd.DataFrame, found: np.ndarray
) -> np.ndarray:
    """The model on its transform of the world's latest snapshot at or before each row's time (all
    features missing where `found` is False); NaN where the transform rejects the row."""
    registry = ModelRegistry(deployment.settings.model_dir)
    meta = registry.meta(version)
    transform = registry.load_transform(meta.transform_version)
    features = as_of_features(deployment.world, table["entity_id"], table["event_timestamp"])
    features.loc[~found, list(FEATURE_NAMES)] = np.nan
    result = transform.transform(features, now=features["event_time"])
    x = result.values[:, column_index(result.columns, meta.features)]
    scores = np.full(len(table), np.nan)
    scores[result.row_ok] = registry.load(version).inplace_predict(x[result.row_ok])
    return scores


@dataclass(frozen=True)
class Table:
    """Rows to score, and which of them are which."""

    frame: pd.DataFrame
    found: np.ndarray  # a snapshot exists at or before the time, within the ttl
    between: np.ndarray  # half a day after a snapshot, before the entity's next one


def make_table(world: World, seed: int) -> Table:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(world.start)
    snapshots = world.features[["entity_id", "event_timestamp"]]
    last_day = snapshots["event_timestamp"] >= start + (world.days - 1) * DAY
    # Random times within the world (every entity has a snapshot by then), some exactly at a snapshot.
    ids = rng.choice(world.entity_ids, 200)
    times = start + HOUR + pd.to_timedelta(rng.random(200) * (world.days - 1), unit="D").floor("us")
    exact = snapshots.sample(20, random_state=seed)
    between = snapshots[~last_day].sample(40, random_state=seed + 1)
    with_features = pd.DataFrame(
        {
            "entity_id": [*ids, *exact["entity_id"], *between["entity_id"]],
            "event_timestamp": [*times, *exact["event_timestamp"], *(between["event_timestamp"] + 12 * HOUR)],
            "kind": ["random"] * 200 + ["exact"] * 20 + ["between"] * 40,
        }
    )
    without = pd.DataFrame(
        {
            "entity_id": ["ent-unknown", "ent-unknown", world.entity_ids[0], world.entity_ids[1]],
            "event_timestamp": [
                start + 2 * DAY,
                start + 3 * DAY,
                start - DAY,  # before the entity's first snapshot
                pd.Timestamp(world.end) + 5 * DAY,  # the last snapshot is older than the 3-day ttl
            ],
            "kind": ["unknown", "unknown", "too early", "beyond ttl"],
        }
    )
    frame = pd.concat([with_features, with_features.iloc[:5], without], ignore_index=True)  # 5 twice
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame["row_ref"] = np.arange(len(frame)) * 7
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    return Table(
        frame=frame,
        found=~frame["kind"].isin(["unknown", "too early", "beyond ttl"]).to_numpy(),
        between=(frame["kind"] == "between").to_numpy(),
    )


@pytest.fixture(scope="module")
def table(deployment: Deployment) -> Table:
    table = make_table(deployment.world, seed=8)
    table.frame.index = pd.RangeIndex(100, 100 + len(table.frame))  # the caller's index is kept
    return table


@pytest.fixture(scope="module")
def scored(deployment: Deployment, table: Table) -> pd.DataFrame:
    return predict_batch_frame(
        deployment.settings,
        table.frame,
        [deployment.challenger],
        golden=deployment.golden,
        chunk_rows=120,  # several chunks, several Feast retrievals
    )


def test_every_score_is_the_model_on_point_in_time_transformed_features(deployment, table, scored) -> None:
    assert scored.index.equals(table.frame.index)
    pd.testing.assert_frame_equal(scored[table.frame.columns], table.frame)
    np.testing.assert_array_equal(scored["entity_found"], table.found)
    expected = {
        v: expected_scores(deployment, v, table.frame, table.found)
        for v in (deployment.golden, deployment.challenger)
    }
    for version, scores in expected.items():
        np.testing.assert_allclose(scored[score_column(version)], scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(scored["score"], scored[score_column(deployment.golden)])
    assert (scored["transform_version"] == transform_version(deployment, deployment.golden)).all()
    # Rows the challenger's transform rejects keep their golden score, and say why.
    rejected = np.isnan(expected[deployment.challenger])
    assert 0.2 < rejected.mean() < 0.8
    assert not np.isnan(expected[deployment.golden]).any()
    reason = f"[{transform_version(deployment, deployment.challenger)}] {CHALLENGER_REJECTS}"
    assert (scored["rejected_reason"].to_numpy()[rejected] == reason).all()
    assert (scored["rejected_reason"].to_numpy()[~rejected] == "").all()


def test_rows_without_features_stay_in_place_flagged_and_follow_the_missing_entity_policy(
    deployment, table, scored
) -> None:
    lost = scored[~table.found]
    assert sorted(lost["kind"]) == ["beyond ttl", "too early", "unknown", "unknown"]
    assert not lost["entity_found"].any()
    # `defaults` (the default policy) scores them on the transform's fill values: checked above.
    assert lost[score_column(deployment.golden)].notna().all()
    # `dlq` rejects them, as the online path sends them to the dead-letter topic.
    dlq = deployment.settings.model_copy(update={"missing_entity_policy": "dlq"})
    rows = table.frame[~table.found | (table.frame["kind"] == "exact")]
    out = predict_batch_frame(dlq, rows, [deployment.golden, deployment.challenger])
    missing = ~out["entity_found"].to_numpy()
    assert missing.sum() == 4 and out.index.equals(rows.index)
    scores = out[[score_column(deployment.golden), score_column(deployment.challenger)]]
    assert scores[missing].isna().all().all()
    assert (out["rejected_reason"][missing] == NOT_FOUND_REASON).all()
    assert scores[score_column(deployment.golden)][~missing].notna().all()


def test_a_time_between_snapshots_reads_the_earlier_snapshot(deployment, table, scored) -> None:
    rows = table.frame[table.between]
    found = np.ones(len(rows), dtype=bool)
    version = deployment.golden
    earlier = expected_scores(deployment, version, rows, found)
    later = expected_scores(
        deployment, version, rows.assign(event_timestamp=rows["event_timestamp"] + DAY), found
    )
    batch = scored[score_column(version)].to_numpy()[table.between]
    np.testing.assert_allclose(batch, earlier, rtol=0, atol=1e-6)
    differs = np.abs(batch - later) > 1e-6
    assert differs.mean() > 0.5, f"only {differs.sum()} of {len(rows)} rows score differently a day later"


def test_run_batch_writes_every_row_in_input_order(deployment, table, scored, tmp_path: Path) -> None:
    source = tmp_path / "requests.parquet"
    table.frame.to_parquet(source, index=False)
    summary = run_batch(deployment.settings, source, tmp_path / "out" / "scores.parquet", None, progress=True)
    written = pd.read_parquet(summary.output_path)
    assert summary.rows == len(table.frame) == len(written)
    assert summary.rejected == int((scored["rejected_reason"] != "").sum()) > 0
    assert summary.seconds > 0 and not list(summary.output_path.parent.glob("*.tmp"))
    pd.testing.assert_frame_equal(written[table.frame.columns], table.frame.reset_index(drop=True))
    for version in (deployment.golden, deployment.challenger):  # every stored version by default
        np.testing.assert_allclose(
            written[score_column(version)], scored[score_column(version)], rtol=0, atol=1e-6
        )
    for column in ("transform_version", "entity_found", "rejected_reason"):
        assert written[column].tolist() == scored[column].tolist()
    assert "score" not in written  # no golden given


def test_csv_input_rejects_unusable_keys_row_by_row(deployment, tmp_path: Path) -> None:
    world = deployment.world
    day_two = (pd.Timestamp(world.start) + 2 * DAY + 2 * HOUR).isoformat()
    source = tmp_path / "requests.csv"
    source.write_text(
        "entity_id,event_timestamp,note\n"
        f"{world.entity_ids[3]},{day_two},ok\n"
        f",{day_two},no id\n"
        f"{world.entity_ids[4]},yesterday,bad time\n"
        f"{world.entity_ids[5]},{day_two},ok\n"
    )
    summary = run_batch(
        deployment.settings, source, tmp_path / "scores.parquet", [deployment.golden], progress=False
    )
    written = pd.read_parquet(summary.output_path)
    assert written["note"].tolist() == ["ok", "no id", "bad time", "ok"]
    assert written["rejected_reason"].tolist() == [
        "",
        "entity_id: missing",
        "event_timestamp: 'yesterday' is not a timestamp",
        "",
    ]
    assert written["entity_found"].tolist() == [True, False, False, True]
    assert str(written["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    scores = written[score_column(deployment.golden)].to_numpy()
    ok = written.iloc[[0, 3]]
    expected = expected_scores(deployment, deployment.golden, ok, np.ones(2, dtype=bool))
    np.testing.assert_allclose(scores[[0, 3]], expected, rtol=0, atol=1e-6)
    assert np.isnan(scores[[1, 2]]).all()
    assert summary.rejected == 2


def test_unusable_inputs_fail_clearly_before_any_feature_read(deployment, tmp_path: Path) -> None:
    settings = deployment.settings
    output = tmp_path / "out.parquet"
    no_time = tmp_path / "no_time.parquet"
    pd.DataFrame({"entity_id": ["ent-000001"]}).to_parquet(no_time)
    with pytest.raises(BatchInputError, match=r"lacks column\(s\) \['event_timestamp'\]"):
        run_batch(settings, no_time, output, None, progress=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("entity_id,event_timestamp\n")
    with pytest.raises(BatchInputError, match="no rows"):
        run_batch(settings, empty, output, None, progress=False)
    with pytest.raises(BatchInputError, match="Parquet or CSV"):
        run_batch(settings, tmp_path / "requests.json", output, None, progress=False)
    with pytest.raises(BatchInputError, match="does not exist"):
        run_batch(settings, tmp_path / "absent.parquet", output, None, progress=False)
    frame = pd.DataFrame(
        {"entity_id": ["ent-000001"], "event_timestamp": [pd.Timestamp(deployment.world.start)]}
    )
    with pytest.raises(RegistryError, match=r"unknown model version 'risk\.9'"):
        predict_batch_frame(settings, frame, ["risk.9"])
    with pytest.raises(RegistryError, match=r"unknown model version 'risk\.9'"):
        run_batch(settings, empty, output, ["risk.9"], progress=False)
    with pytest.raises(BatchInputError, match="no rows"):
        predict_batch_frame(settings, frame.iloc[:0], [deployment.golden])
    with pytest.raises(BatchInputError, match="output column"):
        predict_batch_frame(settings, frame.assign(entity_found=True), [deployment.golden])
    assert not output.exists()
