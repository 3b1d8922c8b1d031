"""FeatureStats.update bins and summarises all features at once: it must count exactly as binning each
feature on its own with `searchsorted` does, and agree with numpy's moments of all data seen so far.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.errors import MetadataError
from rig.features import stats as stats_module
from rig.features.stats import FeatureStats

SPECIAL = (math.nan, math.inf, -math.inf, None)


@cache
def reference(bins: int) -> FeatureStats:
    """Features of several kinds, so that they have different numbers of edges (none for two)."""
    rng = np.random.default_rng(7)
    rows = 2_000
    skewed = np.where(rng.random(rows) < 0.8, 0.0, rng.normal(0, 100, rows))
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, rows),
            "age": rng.integers(18, 25, rows),
            "flag": rng.random(rows) < 0.3,
            "constant": np.full(rows, 3.0),
            "never": np.full(rows, np.nan),
            "skewed": skewed,
            "text": ["a"] * rows,
        }
    )
    return FeatureStats.from_reference(frame, bins=bins)


def expected_counts(edges: np.ndarray, values: np.ndarray) -> list[int]:
    """Counts as binning the one feature with `searchsorted` gives them: missing, then each bin."""
    finite = values[np.isfinite(values)]
    bins = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    return [values.size - finite.size, *bins.tolist()]


@st.composite
def batches(draw: st.DrawFn, edges: dict[str, list[float]]) -> dict[str, Any]:
    """Columns of one batch: some tracked features absent, values with NaN, ±inf, None and ties."""
    rows = draw(st.integers(0, 25))
    columns: dict[str, Any] = {"untracked": np.zeros(rows)}
    for name, feature_edges in edges.items():
        if draw(st.integers(0, 4)) == 0:
            continue
        element = st.one_of(
            st.floats(-1e3, 1e3),
            st.sampled_from(SPECIAL),
            st.sampled_from(feature_edges or [0.0]),
        )
        values = draw(st.lists(element, min_size=rows, max_size=rows))
        shape = draw(st.sampled_from(["list", "array", "object", "column"]))
        if shape == "list":
            columns[name] = values
        elif shape == "object":
            columns[name] = np.array(values, dtype=object)
        else:
            array = np.array(values, dtype=np.float64)
            columns[name] = array.reshape(-1, 1) if shape == "column" else array
    return columns


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.data(), bins=st.sampled_from([1, 3, 10]), chunk=st.sampled_from([1, 50, 500, 1 << 22]))
def test_update_matches_per_feature_binning_and_numpy_moments(
    data: st.DataObject, bins: int, chunk: int
) -> None:
    stats = reference(bins).empty()
    edges = {name: sketch["edges"] for name, sketch in stats.to_dict().items()}
    seen: dict[str, list[np.ndarray]] = {name: [] for name in stats.features}
    for _ in range(data.draw(st.integers(1, 4))):
        columns = data.draw(batches(edges))
        with mock.patch.object(stats_module, "COMPARISONS_PER_CHUNK", chunk):
            stats.update(columns)
        rows = np.size(columns["untracked"])
        for name in stats.features:
            column = columns.get(name, np.full(rows, np.nan))
            seen[name].append(np.asarray(column, dtype=np.float64).reshape(-1))

    for name, summary in stats.to_dict().items():
        values = np.concatenate(seen[name])
        finite = values[np.isfinite(values)]
        assert summary["counts"] == expected_counts(np.asarray(edges[name]), values)
        assert (summary["n"], summary["missing"]) == (finite.size, values.size - finite.size)
        if finite.size:
            assert (summary["min"], summary["max"]) == (finite.min(), finite.max())
            assert summary["mean"] == pytest.approx(finite.mean(), rel=1e-9, abs=1e-9)
            m2 = float(np.square(finite - finite.mean()).sum())
            assert summary["m2"] == pytest.approx(m2, rel=1e-9, abs=1e-9)
        else:
            assert (summary["mean"], summary["m2"], summary["min"], summary["max"]) == (None, 0.0, None, None)


def test_rows_held_by_update_are_added_once_before_any_read() -> None:
    rng = np.random.default_rng(5)
    sizes = (3, 700, 5, 1, 2)
    batches = [
        {"amount": rng.lognormal(3, 1, n), "age": rng.integers(18, 25, n).astype(float)} for n in sizes
    ]
    at_once, held, merged_late = reference(10).empty(), reference(10).empty(), reference(10).empty()
    with mock.patch.object(stats_module, "HELD_ROWS", 1):  # every update added at once
        for batch in batches:
            at_once.update(batch)
    for i, batch in enumerate(batches):
        held.update(batch)
        merged_late.update(batch)
        if i == 2:
            held.psi()  # a read adds what is held, and only once
    both = merged_late.merge(reference(10).empty())
    for stats in (held, held, both):
        for name, summary in stats.to_dict().items():
            expected = at_once.to_dict()[name]
            if name not in ("amount", "age"):  # no rows: nothing to round differently
                assert summary == expected
                continue
            assert summary["counts"] == expected["counts"] and summary["n"] == expected["n"] == sum(sizes)
            assert summary["mean"] == pytest.approx(expected["mean"], rel=1e-12)
            assert summary["m2"] == pytest.approx(expected["m2"], rel=1e-9)


def test_reference_histograms_match_per_feature_binning_even_in_small_chunks() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(0, 1, 1_000), "k": rng.integers(0, 5, 1_000).astype(float)})
    frame.loc[::9, "x"] = np.nan
    whole = FeatureStats.from_reference(frame).to_dict()
    with mock.patch.object(stats_module, "COMPARISONS_PER_CHUNK", 20):
        chunked = FeatureStats.from_reference(frame).to_dict()
    for name in ("x", "k"):
        values = frame[name].to_numpy()
        assert whole[name]["reference"] == expected_counts(np.asarray(whole[name]["edges"]), values)
        assert chunked[name]["reference"] == whole[name]["reference"]


def test_a_batch_of_no_rows_changes_nothing() -> None:
    stats = reference(10).empty()
    stats.update({"amount": np.ones(3), "age": np.array([20, None, 21], dtype=object)})
    before = stats.to_dict()
    stats.update({})
    stats.update({"amount": np.empty(0), "flag": []})
    assert stats.to_dict() == before


def test_statistics_without_tracked_features_take_batches() -> None:
    stats = FeatureStats.from_reference(pd.DataFrame({"text": ["a", "b"]}))
    stats.update({"text": ["c"], "other": [1.0]})
    assert stats.features == () and stats.to_dict() == {}


def test_a_text_column_is_named_and_the_batch_is_not_counted_at_all() -> None:
    stats = reference(10).empty()
    before = stats.to_dict()
    with pytest.raises(MetadataError, match="feature 'age' is not numeric"):
        stats.update({"amount": np.ones(2), "age": np.array(["18", "x"])})
    assert stats.to_dict() == before


def test_columns_of_different_shapes_but_one_length_are_flattened() -> None:
    stats, flat = reference(10).empty(), reference(10).empty()
    stats.update({"amount": np.arange(4.0).reshape(-1, 1), "age": np.array([18, 19, None, 30], dtype=object)})
    flat.update({"amount": np.arange(4.0), "age": np.array([18, 19, np.nan, 30])})
    assert stats.to_dict() == flat.to_dict()


def test_windows_made_from_statistics_do_not_share_their_counts() -> None:
    base = reference(10)
    first, second = base.empty(), base.empty()
    first.update({"amount": np.full(5, 40.0)})
    merged = first.merge(second)
    merged_before, base_before = merged.to_dict(), base.to_dict()
    first.update({"amount": np.full(7, 10.0)})
    second.update({"age": np.full(3, 20.0)})
    assert merged.to_dict() == merged_before and base.to_dict() == base_before
    assert first.to_dict()["amount"]["n"] == 12 and second.to_dict()["amount"]["missing"] == 3


def test_stored_edges_that_are_not_sorted_are_refused() -> None:
    stored = reference(10).to_dict()
    stored["amount"]["edges"] = stored["amount"]["edges"][::-1]
    with pytest.raises(MetadataError, match="not sorted"):
        FeatureStats.from_dict(stored)
