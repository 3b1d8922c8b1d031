"""Feature transformer: each op by hand, fitted on train only, versioned, and online == batch."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rig.errors import TransformError
from rig.transform.fitted import FittedTransform, TransformResult, fit
from rig.transform.spec import TransformSpec

NAN = np.nan


def spec_of(steps: list[dict[str, Any]], outputs: list[str]) -> TransformSpec:
    return TransformSpec.from_dict({"steps": steps, "outputs": outputs})


def run(
    steps: list[dict[str, Any]], outputs: list[str], data: dict[str, Any], now: Any = None
) -> TransformResult:
    """Fit on `data` itself and transform it (enough for ops without fitted parameters)."""
    fitted = fit(spec_of(steps, outputs), data, now=now)
    return fitted.transform(data, now=now)


def column(result: TransformResult, name: str) -> np.ndarray:
    return result.values[:, result.columns.index(name)]


# A spec touching every op, with rows that exercise the edge cases; shared by the invariance tests.
FULL_STEPS: list[dict[str, Any]] = [
    {"op": "fill_missing", "column": "amount", "strategy": "median", "indicator": True},
    {"op": "log1p", "column": "amount", "output": "log_amount"},
    {"op": "standardize", "column": "log_amount", "output": "log_amount_z"},
    {"op": "clip", "column": "score", "lo": -1.0, "hi": 1.0},
    {"op": "bucketize", "column": "age", "edges": [18, 65], "encoding": "one_hot"},
    {"op": "one_hot", "column": "country", "categories": ["fr", "de"]},
    {"op": "ratio", "numerator": "amount", "denominator": "n_orders", "output": "per_order", "fill": -1.0},
    {"op": "time_since", "column": "last_seen", "output": "since_seen_s"},
    {"op": "passthrough", "column": "n_orders"},
]
FULL_OUTPUTS = [
    "amount",
    "amount_missing",
    "log_amount_z",
    "score",
    "age_0",
    "age_1",
    "age_2",
    "country_fr",
    "country_de",
    "per_order",
    "since_seen_s",
    "n_orders",
]
NOW_MS = 1_700_000_000_000.0


def full_data() -> dict[str, np.ndarray]:
    return {
        "amount": np.array([10.0, NAN, 0.0, 99.0, -5.0, 3.0]),
        "score": np.array([0.5, 7.0, -np.inf, NAN, 0.0, 1.0]),
        "age": np.array([17.0, 18.0, 64.9, 65.0, 30.0, 40.0]),
        "country": np.array(["fr", "de", "xx", "fr", "de", "fr"]),
        "n_orders": np.array([2.0, 0.0, 0.0, 3.0, 1.0, np.inf]),
        "last_seen": NOW_MS - np.array([1000.0, 0.0, 60_000.0, 5.0, 1.0, 2.0]),
    }


def full_fitted() -> FittedTransform:
    train = {
        "amount": np.array([1.0, 3.0, 100.0, NAN]),
        "score": np.zeros(4),
        "age": np.zeros(4),
        "country": np.array(["fr", "fr", "de", "fr"]),
        "n_orders": np.ones(4),
        "last_seen": np.full(4, NOW_MS),
    }
    return fit(spec_of(FULL_STEPS, FULL_OUTPUTS), train, now=np.full(4, NOW_MS))


def assert_same_result(a: TransformResult, b: TransformResult) -> None:
    np.testing.assert_array_equal(a.values, b.values)  # NaN == NaN here
    np.testing.assert_array_equal(a.row_ok, b.row_ok)
    assert a.reasons == b.reasons
    assert a.columns == b.columns


# --- each op against a hand-computed expectation ---------------------------------------------


def test_fill_missing_constant_fills_nan_and_none_and_flags_them() -> None:
    data = {"x": np.array([1.0, None, NAN, 4.0], dtype=object)}
    result = run(
        [{"op": "fill_missing", "column": "x", "value": -1.0, "indicator": True}], ["x", "x_missing"], data
    )
    np.testing.assert_array_equal(column(result, "x"), [1.0, -1.0, -1.0, 4.0])
    np.testing.assert_array_equal(column(result, "x_missing"), [0.0, 1.0, 1.0, 0.0])
    assert result.row_ok.all()


def test_fill_missing_does_not_treat_inf_as_missing() -> None:
    result = run([{"op": "fill_missing", "column": "x", "value": 0.0}], ["x"], {"x": np.array([np.inf, 1.0])})
    assert result.row_ok.tolist() == [False, True]
    assert "x" in result.reasons[0]


def test_log1p_matches_numpy_and_rejects_negative_rows_only() -> None:
    result = run([{"op": "log1p", "column": "x"}], ["x"], {"x": np.array([0.0, 1.0, np.e - 1.0, -0.5])})
    np.testing.assert_allclose(column(result, "x")[:3], [0.0, np.log(2.0), 1.0], rtol=1e-6)
    assert result.row_ok.tolist() == [True, True, True, False]
    assert result.reasons[3].startswith("log1p(x): negative value")


def test_clip_at_zero_before_log1p_turns_negative_values_into_zero() -> None:
    steps: list[dict[str, Any]] = [{"op": "clip", "column": "x", "lo": 0.0}, {"op": "log1p", "column": "x"}]
    result = run(steps, ["x"], {"x": np.array([-3.0, 1.0])})
    np.testing.assert_allclose(column(result, "x"), [0.0, np.log(2.0)], rtol=1e-6)
    assert result.row_ok.all()


def test_clip_bounds_values_and_turns_inf_into_the_bounds() -> None:
    data = {"x": np.array([-np.inf, -2.0, 0.5, 2.0, np.inf])}
    result = run([{"op": "clip", "column": "x", "lo": -1.0, "hi": 1.0}], ["x"], data)
    np.testing.assert_array_equal(column(result, "x"), [-1.0, -1.0, 0.5, 1.0, 1.0])
    assert result.row_ok.all()


def test_bucketize_index_puts_edges_in_the_upper_bucket_and_missing_rejects() -> None:
    data = {"x": np.array([-1.0, 0.0, 5.0, 10.0, 100.0, NAN])}
    result = run([{"op": "bucketize", "column": "x", "edges": [0, 10], "output": "b"}], ["b"], data)
    np.testing.assert_array_equal(column(result, "b")[:5], [0, 1, 1, 2, 2])
    assert result.row_ok.tolist() == [True] * 5 + [False]


def test_bucketize_one_hot_sets_exactly_one_bucket_column() -> None:
    data = {"x": np.array([-1.0, 3.0, 10.0])}
    result = run(
        [{"op": "bucketize", "column": "x", "edges": [0, 10], "encoding": "one_hot"}],
        ["x_0", "x_1", "x_2"],
        data,
    )
    np.testing.assert_array_equal(result.values, np.eye(3, dtype=np.float32))


def test_one_hot_marks_known_categories_and_gives_zeros_for_unknown_or_missing() -> None:
    data = {"c": np.array(["a", "b", "zzz", None], dtype=object)}
    result = run([{"op": "one_hot", "column": "c", "categories": ["a", "b"]}], ["c_a", "c_b"], data)
    np.testing.assert_array_equal(result.values, [[1, 0], [0, 1], [0, 0], [0, 0]])
    assert result.row_ok.all()


def test_one_hot_matches_integer_codes_by_their_decimal_text() -> None:
    steps = [{"op": "one_hot", "column": "c", "categories": ["1", "2"]}]
    as_ints = run(steps, ["c_1", "c_2"], {"c": np.array([1, 2, 3])})
    with_gap = run(
        steps, ["c_1", "c_2"], {"c": np.array([1.0, 2.0, NAN, 1.5])}
    )  # pandas int column with a gap
    np.testing.assert_array_equal(as_ints.values, [[1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(with_gap.values, [[1, 0], [0, 1], [0, 0], [0, 0]])


def test_one_hot_treats_pandas_na_in_an_object_array_as_missing() -> None:
    data = {"c": np.array(["a", pd.NA, "b"], dtype=object)}
    result = run([{"op": "one_hot", "column": "c", "categories": ["a", "b"]}], ["c_a", "c_b"], data)
    np.testing.assert_array_equal(result.values, [[1, 0], [0, 0], [0, 1]])


def test_ratio_divides_and_fills_zero_denominators_never_inf() -> None:
    data = {"n": np.array([6.0, 1.0, 0.0, -2.0, NAN]), "d": np.array([3.0, 0.0, 0.0, 4.0, 2.0])}
    step = {"op": "ratio", "numerator": "n", "denominator": "d", "output": "r", "fill": 7.0}
    result = run([step], ["r"], data)
    np.testing.assert_array_equal(column(result, "r")[:4], [2.0, 7.0, 7.0, -0.5])
    assert result.row_ok.tolist() == [True, True, True, True, False]  # a missing numerator is not hidden


def test_standardize_uses_mean_and_population_std_of_train() -> None:
    train = {"x": np.array([1.0, 2.0, 3.0, 4.0])}  # mean 2.5, std sqrt(1.25)
    fitted = fit(spec_of([{"op": "standardize", "column": "x"}], ["x"]), train)
    result = fitted.transform({"x": np.array([2.5, 2.5 + np.sqrt(1.25)])})
    np.testing.assert_allclose(column(result, "x"), [0.0, 1.0], atol=1e-6)
    assert fitted.params[0] == {"mean": 2.5, "std": pytest.approx(np.sqrt(1.25))}


def test_standardize_with_constant_train_column_uses_std_one() -> None:
    fitted = fit(spec_of([{"op": "standardize", "column": "x"}], ["x"]), {"x": np.full(5, 3.0)})
    np.testing.assert_array_equal(column(fitted.transform({"x": np.array([5.0])}), "x"), [2.0])


def test_time_since_gives_seconds_from_epoch_ms_and_from_datetimes() -> None:
    step = [{"op": "time_since", "column": "t", "output": "age_s"}]
    now = np.array([NOW_MS, NOW_MS + 500.0])
    from_ms = run(step, ["age_s"], {"t": np.array([NOW_MS - 90_000.0, NOW_MS])}, now=now)
    stamps = np.array([int(NOW_MS) - 90_000, int(NOW_MS)], dtype="datetime64[ms]")
    now_stamps = now.astype(np.int64).astype("datetime64[ms]")
    from_datetimes = run(step, ["age_s"], {"t": stamps}, now=now_stamps)
    from_text = run(step, ["age_s"], {"t": stamps.astype(str)}, now=now_stamps.astype(str))
    np.testing.assert_array_equal(column(from_ms, "age_s"), [90.0, 0.5])
    np.testing.assert_array_equal(column(from_datetimes, "age_s"), [90.0, 0.5])
    np.testing.assert_array_equal(column(from_text, "age_s"), [90.0, 0.5])


def test_time_since_reads_timezone_aware_columns_and_a_scalar_now() -> None:
    frame = pd.DataFrame({"t": pd.to_datetime(["2024-01-01T01:00:00+01:00", None], utc=False)})
    step = [{"op": "time_since", "column": "t"}]
    result = run(step, ["t"], frame, now=pd.Timestamp("2024-01-01T00:01:00Z"))
    assert column(result, "t")[0] == 60.0
    assert result.row_ok.tolist() == [True, False]  # a missing timestamp is rejected, not guessed


def test_time_since_parses_iso_8601_strings_and_rejects_other_text_per_row() -> None:
    data = {"t": np.array(["2024-01-01T00:00:00Z", "01/02/2024", "2024-01-01T00:00:30+00:00"], dtype=object)}
    now = pd.Timestamp("2024-01-01T00:01:00Z")
    result = run([{"op": "time_since", "column": "t"}], ["t"], data, now=now)
    np.testing.assert_array_equal(column(result, "t")[[0, 2]], [60.0, 30.0])
    assert result.row_ok.tolist() == [True, False, True]
    assert result.reasons[1].startswith("t: not a timestamp")


def test_passthrough_copies_and_outputs_follow_the_declared_order() -> None:
    data = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    steps = [{"op": "passthrough", "column": "a"}, {"op": "passthrough", "column": "b", "output": "b2"}]
    result = run(steps, ["b2", "a"], data)
    assert result.columns == ("b2", "a")
    np.testing.assert_array_equal(result.values, [[3.0, 1.0], [4.0, 2.0]])


def test_output_is_float32_2d_c_contiguous() -> None:
    result = full_fitted().transform(full_data(), now=NOW_MS)
    assert result.values.dtype == np.float32
    assert result.values.shape == (6, len(FULL_OUTPUTS))
    assert result.values.flags.c_contiguous


# --- fitting ----------------------------------------------------------------------------------


def test_fitted_median_comes_from_train_and_is_reused_on_new_data() -> None:
    spec = spec_of([{"op": "fill_missing", "column": "x", "strategy": "median"}], ["x"])
    fitted = fit(spec, {"x": np.array([1.0, 2.0, 9.0, NAN])})
    new = fitted.transform({"x": np.array([NAN, 100.0, 200.0, 300.0])})
    assert fitted.params[0] == {"value": 2.0}
    np.testing.assert_array_equal(column(new, "x"), [2.0, 100.0, 200.0, 300.0])


def test_fitted_mean_ignores_non_finite_train_values() -> None:
    spec = spec_of([{"op": "fill_missing", "column": "x", "strategy": "mean"}], ["x"])
    fitted = fit(spec, {"x": np.array([1.0, 5.0, np.inf, NAN])})
    assert fitted.params[0] == {"value": 3.0}


def test_fitted_statistics_see_the_output_of_earlier_steps() -> None:
    steps = [{"op": "log1p", "column": "x"}, {"op": "standardize", "column": "x"}]
    fitted = fit(spec_of(steps, ["x"]), {"x": np.array([0.0, np.e - 1.0])})  # log1p -> 0, 1
    assert fitted.params[1]["mean"] == pytest.approx(0.5)
    assert fitted.params[1]["std"] == pytest.approx(0.5)


def test_fit_without_any_finite_value_raises() -> None:
    spec = spec_of([{"op": "standardize", "column": "x"}], ["x"])
    with pytest.raises(TransformError, match="no finite training values"):
        fit(spec, {"x": np.array([NAN, np.inf])})


# --- versioning and persistence ---------------------------------------------------------------


def test_version_changes_when_a_fitted_param_changes() -> None:
    spec = spec_of([{"op": "standardize", "column": "x"}], ["x"])
    first = fit(spec, {"x": np.array([1.0, 2.0, 3.0])})
    second = fit(spec, {"x": np.array([1.0, 2.0, 3.5])})
    assert first.version != second.version


def test_version_changes_when_a_spec_param_changes() -> None:
    data = {"x": np.array([1.0])}
    low = fit(spec_of([{"op": "clip", "column": "x", "hi": 1.0}], ["x"]), data)
    high = fit(spec_of([{"op": "clip", "column": "x", "hi": 1.5}], ["x"]), data)
    assert low.version != high.version


def test_version_ignores_key_order_and_spelled_out_defaults() -> None:
    fitted = full_fitted()
    reordered: dict[str, Any] = {
        "outputs": FULL_OUTPUTS,
        "steps": [dict(reversed(list(step.items()))) for step in FULL_STEPS],
    }
    reordered["steps"][-1]["output"] = None  # the default, written out
    params = [dict(reversed(list(p.items()))) for p in fitted.params]
    assert FittedTransform(TransformSpec.from_dict(reordered), params).version == fitted.version


def test_version_is_pinned_for_a_known_transform() -> None:
    # Stable across processes and runs (no hash seeds, no dict order). If this changes on purpose,
    # bump TRANSFORM_FORMAT: stored models name the transform version they were trained with.
    spec = spec_of([{"op": "fill_missing", "column": "x", "strategy": "median"}], ["x"])
    assert FittedTransform(spec, [{"value": 2.0}]).version == "e8340d02d9179d50"


def test_json_round_trip_keeps_version_and_exact_outputs() -> None:
    fitted = full_fitted()
    loaded = FittedTransform.from_json(fitted.to_json())
    assert loaded.version == fitted.version
    assert loaded.params == fitted.params
    assert_same_result(loaded.transform(full_data(), now=NOW_MS), fitted.transform(full_data(), now=NOW_MS))


def test_spec_json_round_trip_gives_an_equal_spec() -> None:
    spec = spec_of(FULL_STEPS, FULL_OUTPUTS)
    assert TransformSpec.from_json(spec.to_json()) == spec


def test_loading_a_tampered_param_is_refused() -> None:
    stored = json.loads(full_fitted().to_json())
    stored["params"][0]["value"] += 1.0
    with pytest.raises(TransformError, match="version"):
        FittedTransform.from_dict(stored)


# --- inputs: DataFrame vs dict, online vs batch -----------------------------------------------


def test_dataframe_and_dict_inputs_give_identical_results() -> None:
    fitted, data = full_fitted(), full_data()
    assert_same_result(fitted.transform(pd.DataFrame(data), now=NOW_MS), fitted.transform(data, now=NOW_MS))


def test_pandas_nullable_columns_give_the_same_result_as_plain_arrays() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "fill_missing", "column": "n", "value": -1.0},
        {"op": "one_hot", "column": "c", "categories": ["a", "7"]},
        {"op": "one_hot", "column": "k", "categories": ["7"]},
    ]
    fitted = fit(spec_of(steps, ["n", "c_a", "c_7", "k_7"]), {"n": [1.0], "c": ["a"], "k": [7]})
    frame = pd.DataFrame(
        {
            "n": pd.array([1, None, 3], dtype="Int64"),
            "c": pd.array(["a", None, "7"], dtype="string"),
            "k": pd.array([7, None, 8], dtype="Int64"),
        }
    )
    arrays = {
        "n": np.array([1.0, NAN, 3.0]),
        "c": np.array(["a", None, "7"], dtype=object),
        "k": np.array([7.0, NAN, 8.0]),
    }
    from_frame = fitted.transform(frame)
    assert_same_result(from_frame, fitted.transform(arrays))
    np.testing.assert_array_equal(from_frame.values, [[1, 1, 0, 1], [-1, 0, 0, 0], [3, 0, 1, 0]])


def test_each_row_alone_gives_the_same_result_as_in_the_batch() -> None:
    fitted, data = full_fitted(), full_data()
    now = np.full(6, NOW_MS)
    batch = fitted.transform(data, now=now)
    assert not batch.row_ok.all()  # the batch mixes good and rejected rows
    for i in range(6):
        alone = fitted.transform(
            {name: values[i : i + 1] for name, values in data.items()}, now=now[i : i + 1]
        )
        np.testing.assert_array_equal(alone.values[0], batch.values[i])
        assert alone.row_ok[0] == batch.row_ok[i]
        assert alone.reasons.get(0) == batch.reasons.get(i)


def test_transform_does_not_modify_its_input_arrays() -> None:
    data = full_data()
    before = {name: values.copy() for name, values in data.items()}
    full_fitted().transform(data, now=NOW_MS)
    for name, values in data.items():
        np.testing.assert_array_equal(values, before[name])


def test_an_empty_batch_gives_an_empty_matrix() -> None:
    data = {name: values[:0] for name, values in full_data().items()}
    result = full_fitted().transform(data, now=np.array([]))
    assert result.values.shape == (0, len(FULL_OUTPUTS))
    assert result.reasons == {}


# --- validation: structural errors raise, bad rows are data -----------------------------------


def test_missing_input_column_raises_naming_it() -> None:
    data = full_data()
    del data["score"]
    with pytest.raises(TransformError, match="'score'"):
        full_fitted().transform(data, now=NOW_MS)


def test_columns_of_different_lengths_raise() -> None:
    data = full_data()
    data["score"] = data["score"][:2]
    with pytest.raises(TransformError, match="'score' has 2 rows"):
        full_fitted().transform(data, now=NOW_MS)


def test_time_since_without_now_raises() -> None:
    with pytest.raises(TransformError, match="now"):
        full_fitted().transform(full_data())


def test_non_finite_rows_are_flagged_with_reasons_not_raised() -> None:
    result = full_fitted().transform(full_data(), now=NOW_MS)
    # row 3: NaN score (clip keeps NaN); row 4: negative amount; row 5: amount / inf is 0, but
    # n_orders=inf passes through unhandled.
    assert result.row_ok.tolist() == [True, True, True, False, False, False]
    assert result.reasons[3] == "non-finite output: score"
    assert result.reasons[4].startswith("log1p(amount): negative value")
    assert result.reasons[5] == "non-finite output: n_orders"
    assert set(result.reasons) == {3, 4, 5}
    np.testing.assert_array_equal(result.rejected, [3, 4, 5])
    np.testing.assert_array_equal(result.ok_values, result.values[:3])
    assert np.isfinite(result.ok_values).all()


def test_values_beyond_float32_range_are_flagged() -> None:
    result = run([{"op": "passthrough", "column": "x"}], ["x"], {"x": np.array([1e39, 1.0])})
    assert result.row_ok.tolist() == [False, True]


def test_a_non_numeric_value_rejects_its_row_only() -> None:
    data = {"x": np.array(["1.5", "oops", None], dtype=object)}
    result = run([{"op": "fill_missing", "column": "x", "value": 0.0}], ["x"], data)
    assert result.row_ok.tolist() == [True, False, True]
    assert result.reasons[1] == "x: not a number"
    np.testing.assert_array_equal(column(result, "x")[[0, 2]], [1.5, 0.0])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"steps": [{"op": "fill_missing", "column": "x"}], "outputs": ["x"]}, "needs a `value`"),
        (
            {
                "steps": [{"op": "fill_missing", "column": "x", "strategy": "median", "value": 1}],
                "outputs": ["x"],
            },
            "learns its value",
        ),
        ({"steps": [{"op": "clip", "column": "x", "lo": 2, "hi": 1}], "outputs": ["x"]}, "lo <= hi"),
        ({"steps": [{"op": "bucketize", "column": "x", "edges": [1, 1]}], "outputs": ["x"]}, "increasing"),
        (
            {"steps": [{"op": "one_hot", "column": "c", "categories": ["a", "a"]}], "outputs": ["c_a"]},
            "unique",
        ),
        ({"steps": [{"op": "passthrough", "column": "x"}], "outputs": ["y"]}, "not written by any step"),
        ({"steps": [{"op": "sqrt", "column": "x"}], "outputs": ["x"]}, "op"),
        ({"steps": [{"op": "log1p", "column": "x", "bogus": 1}], "outputs": ["x"]}, "bogus"),
        (
            {
                "steps": [
                    {"op": "passthrough", "column": "c"},
                    {"op": "one_hot", "column": "c", "categories": ["a"]},
                ],
                "outputs": ["c_a"],
            },
            "raw input",
        ),
        (
            {
                "steps": [
                    {"op": "ratio", "numerator": "a", "denominator": "b", "output": "r", "fill": "inf"}
                ],
                "outputs": ["r"],
            },
            "finite",
        ),
    ],
)
def test_invalid_specs_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(TransformError, match=message):
        TransformSpec.from_dict(spec)


def test_params_that_do_not_match_the_spec_are_refused() -> None:
    spec = spec_of([{"op": "standardize", "column": "x"}], ["x"])
    with pytest.raises(TransformError, match="needs params"):
        FittedTransform(spec, [{"mean": 0.0}])
    with pytest.raises(TransformError, match="invalid params"):
        FittedTransform(spec, [{"mean": 0.0, "std": 0.0}])
    with pytest.raises(TransformError, match="non-numeric params"):
        FittedTransform(spec, [{"mean": "zero", "std": 1.0}])  # type: ignore[dict-item]
    with pytest.raises(TransformError, match="list of 1 parameter sets"):
        FittedTransform(spec, {"mean": 0.0, "std": 1.0})  # type: ignore[arg-type]
