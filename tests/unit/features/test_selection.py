"""A deployment's feature selection: the union of its models', colliding names kept apart."""

from __future__ import annotations

import pytest

from rig.errors import FeatureStoreError
from rig.features.selection import FeatureSelection
from rig.wire.requests import JoinKey

DRIVER = (JoinKey("driver_id", "int64"),)


def selection(
    *refs: str, keys: tuple[JoinKey, ...] = DRIVER, fields: tuple[str, ...] = ()
) -> FeatureSelection:
    return FeatureSelection(
        refs=refs,
        columns=tuple(ref.split(":", 1)[1] for ref in refs),
        types=tuple("Float32" for _ in refs),
        join_keys=keys,
        request_fields=fields,
        request_types=tuple("Int64" for _ in fields),
    )


def test_the_union_reads_each_ref_once_and_keeps_plain_names_where_they_are_unique() -> None:
    golden = selection("stats:conv_rate", "stats:acc_rate")
    challenger = selection("stats:acc_rate", "activity:trips", fields=("val_to_add",))
    union = golden.union(challenger)
    assert union.refs == ("stats:conv_rate", "stats:acc_rate", "activity:trips")
    assert union.columns == ("conv_rate", "acc_rate", "trips")
    assert union.request_fields == ("val_to_add",) and not union.full_names
    assert union.renaming(challenger) == {"acc_rate": "acc_rate", "trips": "trips"}


def test_one_name_in_two_views_lands_in_two_full_name_columns_and_each_model_finds_its_own() -> None:
    golden = selection("stats:conv_rate")
    challenger = selection("stats_fresh:conv_rate")
    union = golden.union(challenger)
    assert union.columns == ("stats__conv_rate", "stats_fresh__conv_rate") and union.full_names
    assert union.renaming(golden) == {"conv_rate": "stats__conv_rate"}
    assert union.renaming(challenger) == {"conv_rate": "stats_fresh__conv_rate"}


def test_models_of_different_entities_cannot_share_a_deployment() -> None:
    with pytest.raises(FeatureStoreError, match="entity"):
        selection("stats:conv_rate").union(selection("riders:rating", keys=(JoinKey("rider_id", "string"),)))


def test_a_selection_survives_its_stored_form() -> None:
    original = selection("stats:conv_rate", "activity:trips", fields=("val_to_add",))
    assert FeatureSelection.from_dict(original.to_dict()) == original


def test_types_the_rig_cannot_serve_are_named_and_strings_pass_only_as_categories() -> None:
    mixed = FeatureSelection(
        refs=("stats:conv_rate", "stats:city", "stats:history"),
        columns=("conv_rate", "city", "history"),
        types=("Float32", "String", "Array(Float32)"),
        join_keys=DRIVER,
    )
    with pytest.raises(FeatureStoreError) as refused:
        mixed.check_types(category_inputs=["city"])
    assert "stats:history" in str(refused.value) and "stats:city" not in str(refused.value)
    with pytest.raises(FeatureStoreError, match="stats:city"):
        mixed.check_types()
