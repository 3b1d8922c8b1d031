"""Metadata store on a SQLite file: every method round-trips; FeatureStats is correct and mergeable."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rig.errors import MetadataError
from rig.features.stats import FeatureStats
from rig.feedback.metadata import MetadataStore
from tests.support.metadata_checks import CHECKS, Check, check_id, opened_store, reference_frame


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    with opened_store(f"sqlite:///{tmp_path / 'nested' / 'metadata.db'}") as opened:
        yield opened


@pytest.mark.parametrize("behaviour", CHECKS, ids=check_id)
def test_store_on_sqlite(store: MetadataStore, behaviour: Check) -> None:
    behaviour(store)


def test_workers_creating_the_schema_at_once_all_succeed(tmp_path: Path) -> None:
    stores = [MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}") for _ in range(12)]
    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        list(pool.map(MetadataStore.create_schema, stores))
    assert stores[0].models() == []
    for store in stores:
        store.close()


def test_unreachable_postgres_is_a_metadata_error_that_says_how_to_start_it() -> None:
    store = MetadataStore("postgresql+psycopg://rig:secret@127.0.0.1:1/rig")
    with pytest.raises(MetadataError, match="run ops/postgres/up") as raised:
        store.models()
    assert "secret" not in str(raised.value)


def test_missing_schema_is_a_metadata_error_that_names_create_schema(tmp_path: Path) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    with pytest.raises(MetadataError, match="create_schema"):
        store.decisions()


def test_malformed_url_is_a_metadata_error() -> None:
    with pytest.raises(MetadataError, match="bad metadata store URL"):
        MetadataStore("not a url")


def normal(mean: float, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 1.0, size)


def test_psi_is_near_zero_for_the_reference_distribution() -> None:
    stats = FeatureStats.from_reference(pd.DataFrame({"x": normal(0, 20_000, 1)}))
    stats.update({"x": normal(0, 20_000, 2)})
    assert stats.psi()["x"] < 0.01


def test_psi_is_large_for_a_shifted_distribution_and_for_more_missing_values() -> None:
    reference = FeatureStats.from_reference(pd.DataFrame({"x": normal(0, 20_000, 1)}))
    shifted, holes = reference.empty(), reference.empty()
    shifted.update({"x": normal(1, 20_000, 2)})
    with_missing = normal(0, 20_000, 3)
    with_missing[:6_000] = np.nan
    holes.update({"x": with_missing})

    assert shifted.psi()["x"] > 0.25
    assert holes.psi()["x"] > 0.25


def test_psi_is_nan_before_any_data() -> None:
    stats = FeatureStats.from_reference(pd.DataFrame({"x": normal(0, 100, 1)}))
    assert np.isnan(stats.psi()["x"])
    assert stats.to_dict()["x"]["psi"] is None


def test_histogram_merge_equals_histogram_of_concatenated_data() -> None:
    reference = FeatureStats.from_reference(reference_frame())
    rng = np.random.default_rng(5)
    parts = [
        {"amount": rng.lognormal(3.5, 1, size), "age": rng.integers(18, 90, size).astype(float)}
        for size in (1_000, 1, 2_500)
    ]
    parts[0]["amount"][::7] = np.nan
    merged = reference.empty()
    for part in parts:
        stats = reference.empty()
        stats.update(part)
        merged = merged.merge(stats)
    whole = reference.empty()
    whole.update({name: np.concatenate([part[name] for part in parts]) for name in ("amount", "age")})

    merged_dict, whole_dict = merged.to_dict(), whole.to_dict()
    for name in ("amount", "age"):
        assert merged_dict[name]["counts"] == whole_dict[name]["counts"]
        for key in ("n", "missing", "min", "max"):
            assert merged_dict[name][key] == whole_dict[name][key]
        for key in ("mean", "std", "psi"):
            assert merged_dict[name][key] == pytest.approx(whole_dict[name][key], rel=1e-9)


def test_summary_statistics_match_numpy() -> None:
    values = normal(2, 10_000, 4)
    values[:500] = np.nan
    values[500] = np.inf
    stats = FeatureStats.from_reference(pd.DataFrame({"x": normal(2, 10_000, 1)}))
    stats.update({"x": values[:4_000]})
    stats.update({"x": values[4_000:]})
    summary = stats.to_dict()["x"]
    finite = values[np.isfinite(values)]

    assert (summary["n"], summary["missing"]) == (finite.size, 501)
    assert summary["missing_rate"] == pytest.approx(501 / 10_000)
    assert summary["mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert summary["std"] == pytest.approx(finite.std(), rel=1e-12)
    assert (summary["min"], summary["max"]) == (finite.min(), finite.max())


def test_quantiles_are_exact_to_within_one_bin() -> None:
    reference = normal(0, 50_000, 1)
    stats = FeatureStats.from_reference(pd.DataFrame({"x": reference}), bins=50)
    values = normal(0.3, 50_000, 2)
    stats.update({"x": values})
    levels = [0.0, 0.1, 0.5, 0.9, 1.0]

    estimated = np.array(stats.quantiles(levels)["x"])
    exact = np.quantile(values, levels)
    widest_inner_bin = np.diff(np.quantile(reference, np.linspace(0.02, 0.98, 49))).max()
    np.testing.assert_allclose(estimated[[0, -1]], exact[[0, -1]])
    assert np.abs(estimated - exact).max() <= widest_inner_bin


def test_discrete_and_constant_features_get_one_bin_per_value() -> None:
    frame = pd.DataFrame({"flag": np.arange(1_000) % 4 == 0, "constant": np.full(1_000, 3.0)})
    stats = FeatureStats.from_reference(frame)
    summary = stats.to_dict()
    assert summary["flag"]["edges"] == [0.0, 1.0]
    assert summary["flag"]["reference"] == [0, 0, 750, 250]
    assert summary["constant"]["reference"] == [0, 0, 1_000]


def test_update_counts_an_absent_feature_as_missing_and_ignores_untracked_columns() -> None:
    stats = FeatureStats.from_reference(reference_frame())
    stats.update({"amount": np.ones(30), "untracked": np.zeros(30)})
    summary = stats.to_dict()
    assert (summary["amount"]["n"], summary["age"]["missing"], summary["age"]["n"]) == (30, 30, 0)
    assert "untracked" not in summary


def test_update_refuses_columns_of_different_lengths_and_text() -> None:
    stats = FeatureStats.from_reference(reference_frame())
    with pytest.raises(MetadataError, match="different lengths"):
        stats.update({"amount": np.ones(3), "age": np.ones(4)})
    with pytest.raises(MetadataError, match="not numeric"):
        stats.update({"amount": np.array(["a", "b"]), "age": np.ones(2)})


def test_stats_from_different_references_do_not_merge() -> None:
    first = FeatureStats.from_reference(reference_frame(seed=1))
    second = FeatureStats.from_reference(reference_frame(seed=2))
    with pytest.raises(MetadataError, match="cannot be merged"):
        first.merge(second)


def test_to_dict_round_trips_through_from_dict() -> None:
    stats = FeatureStats.from_reference(reference_frame())
    stats.update({"amount": np.random.default_rng(1).lognormal(3, 1, 200), "age": np.full(200, np.nan)})
    assert FeatureStats.from_dict(stats.to_dict()).to_dict() == stats.to_dict()


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://rig:secret@db:notaport/rig", "nodriver://rig:secret@db/rig"]
)
def test_a_malformed_url_is_a_metadata_error_without_its_password(url: str) -> None:
    with pytest.raises(MetadataError, match="bad metadata store URL") as raised:
        MetadataStore(url)
    assert "rig:***@db" in str(raised.value)
    assert "secret" not in str(raised.value)
