"""What a model reads from a Feast repo: a feature service, or explicit `view:feature` refs, resolved
against the applied registry into feature refs, column names, types, typed join keys and the
request-time fields on-demand feature views need.

A model's raw input columns are the features' names (as Feast's `full_feature_names=False` gives
them); two features of one name in different views of one selection are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rig.errors import FeatureStoreError
from rig.wire.requests import JoinKey, KeyKind, KeySpec

if TYPE_CHECKING:
    from feast import FeatureStore

SERVED_TYPES = frozenset({"Float32", "Float64", "Int32", "Int64", "Bool"})
"""Feast types served as numbers."""
CATEGORY_TYPES = frozenset({"String"})
"""Feast types served only to a transform that reads them as categories (one-hot)."""
_KEY_KINDS: dict[str, KeyKind] = {"String": "string", "Int64": "int64", "Int32": "int32"}


@dataclass(frozen=True)
class FeatureSelection:
    """The features a model reads, resolved against the registry.

    Attributes:
        refs: `view:feature` references, in order.
        columns: the raw input column each ref gives (its feature name).
        types: the Feast type name of each ref (`Float32`, `Int64`, `Map`, ...).
        join_keys: the entity's typed join keys (every view of the selection is of this entity).
        request_fields: request-time fields the on-demand views read (from a request's `features`).
        request_types: the Feast type name of each request field.
        on_demand: views of the selection that are on-demand feature views.
        service: the feature service the refs came from, if any.
    """

    refs: tuple[str, ...]
    columns: tuple[str, ...]
    types: tuple[str, ...]
    join_keys: tuple[JoinKey, ...]
    request_fields: tuple[str, ...] = ()
    on_demand: tuple[str, ...] = ()
    service: str | None = None
    request_types: tuple[str, ...] = ()

    @property
    def key_spec(self) -> KeySpec:
        """The entity's join keys as the wire shape of a request."""
        return KeySpec(self.join_keys)

    @property
    def views(self) -> tuple[str, ...]:
        """Views the refs read from, in order of first use."""
        return tuple(dict.fromkeys(ref.split(":", 1)[0] for ref in self.refs))

    def check_types(self, category_inputs: Iterable[str] = ()) -> None:
        """Refuse features the rig cannot serve to this model.

        Args:
            category_inputs: columns the model's transform reads as categories (a String feature
                may be one of them).

        Raises:
            FeatureStoreError: naming every feature of an unsupported type.
        """
        categories = set(category_inputs)
        bad = [
            f"{ref} ({kind})"
            for ref, column, kind in zip(self.refs, self.columns, self.types, strict=True)
            if kind not in SERVED_TYPES and not (kind in CATEGORY_TYPES and column in categories)
        ]
        if bad:
            raise FeatureStoreError(
                f"features of types the rig cannot serve: {', '.join(bad)}; served are "
                f"{', '.join(sorted(SERVED_TYPES))}, and String where the model's transform one-hot "
                "encodes it. Leave them out of the feature service, or give the model a transform that "
                "turns them into numbers."
            )

    def union(self, other: FeatureSelection) -> FeatureSelection:
        """The features both read (one read serves every model of a deployment). Two features of one
        name from different views keep apart under their full names (`<view>__<feature>`, Feast's
        `full_feature_names`); `column_of` says where each ref lands.

        Raises:
            FeatureStoreError: the entities differ.
        """
        if other.join_keys != self.join_keys:
            raise FeatureStoreError(
                f"models of one deployment must share their entity: {_keys(self)} != {_keys(other)}"
            )
        refs = {ref: (ref.split(":", 1)[1], kind) for ref, kind in zip(self.refs, self.types, strict=True)}
        for ref, kind in zip(other.refs, other.types, strict=True):
            refs.setdefault(ref, (ref.split(":", 1)[1], kind))
        names = [name for name, _ in refs.values()]
        refs = {
            ref: (full_name(ref) if names.count(name) > 1 else name, kind)
            for ref, (name, kind) in refs.items()
        }
        fields = dict(zip(self.request_fields, self.request_types, strict=True))
        for name, kind in zip(other.request_fields, other.request_types, strict=True):
            fields.setdefault(name, kind)
        return FeatureSelection(
            refs=tuple(refs),
            columns=tuple(column for column, _ in refs.values()),
            types=tuple(kind for _, kind in refs.values()),
            join_keys=self.join_keys,
            request_fields=tuple(fields),
            on_demand=tuple(dict.fromkeys((*self.on_demand, *other.on_demand))),
            service=None,
            request_types=tuple(fields.values()),
        )

    @property
    def full_names(self) -> bool:
        """Whether some column is a full name (`<view>__<feature>`): reads must ask Feast for them."""
        return any(column == full_name(ref) for ref, column in zip(self.refs, self.columns, strict=True))

    def column_of(self, ref: str) -> str:
        """The column a ref lands in."""
        return self.columns[self.refs.index(ref)]

    def renaming(self, model: FeatureSelection) -> dict[str, str]:
        """For a model whose features this selection includes: its column name → this selection's
        column of the same ref."""
        return {column: self.column_of(ref) for ref, column in zip(model.refs, model.columns, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        """Plain form, stored in a model's metadata."""
        return {
            "refs": list(self.refs),
            "columns": list(self.columns),
            "types": list(self.types),
            "join_keys": [[key.name, key.kind] for key in self.join_keys],
            "request_fields": list(self.request_fields),
            "on_demand": list(self.on_demand),
            "service": self.service,
            "request_types": list(self.request_types),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSelection:
        """The selection `to_dict` stored."""
        return cls(
            refs=tuple(data["refs"]),
            columns=tuple(data["columns"]),
            types=tuple(data["types"]),
            join_keys=tuple(JoinKey(name, kind) for name, kind in data["join_keys"]),
            request_fields=tuple(data.get("request_fields", ())),
            on_demand=tuple(data.get("on_demand", ())),
            service=data.get("service"),
            request_types=tuple(data.get("request_types", ())),
        )


def resolve(
    store: FeatureStore, service: str | None = None, refs: Sequence[str] | None = None
) -> FeatureSelection:
    """The selection of a feature service, of explicit refs, or (neither) the repo's default: its
    only feature service, else every feature of its online feature views.

    Raises:
        FeatureStoreError: unknown service, view or feature; views of different entities; one
            column name for two features.
    """
    import feast.errors

    project = store.project
    try:
        if service:
            projections = store.get_feature_service(service).feature_view_projections
            wanted = [(p.name, [f.name for f in p.features]) for p in projections]
        elif refs:
            wanted = _split_refs(refs)
        else:
            services = store.list_feature_services()
            if len(services) == 1:
                return resolve(store, service=services[0].name)
            wanted = [(v.name, [f.name for f in v.features]) for v in store.list_feature_views() if v.online]
        plain = {view.name: view for view in store.list_feature_views()}
        on_demand = {view.name: view for view in store.list_on_demand_feature_views()}
    except feast.errors.FeastObjectNotFoundException as error:
        raise FeatureStoreError(f"{error} in Feast project {project!r}; run `rig features apply`") from error
    if not wanted:
        raise FeatureStoreError(f"Feast project {project!r} has no online feature view to read")

    selected: dict[str, tuple[str, str]] = {}
    keys: dict[str, JoinKey] = {}
    request_fields: dict[str, str] = {}
    demand: list[str] = []
    for view_name, names in wanted:
        if view_name in plain:
            view = plain[view_name]
            fields = {f.name: str(f.dtype) for f in view.features}
            for column in view.entity_columns:
                keys.setdefault(column.name, _join_key(column.name, str(column.dtype), view_name))
        elif view_name in on_demand:
            demand_view = on_demand[view_name]
            fields = {f.name: str(f.dtype) for f in demand_view.features}
            demand.append(view_name)
            for source in demand_view.source_request_sources.values():
                request_fields.update((f.name, str(f.dtype)) for f in source.schema)
            for projection in demand_view.source_feature_view_projections.values():
                for column in plain[projection.name].entity_columns:
                    keys.setdefault(column.name, _join_key(column.name, str(column.dtype), view_name))
        else:
            raise FeatureStoreError(f"no feature view {view_name!r} in Feast project {project!r}")
        for name in names:
            if name not in fields:
                raise FeatureStoreError(f"feature view {view_name!r} has no feature {name!r}")
            selected[f"{view_name}:{name}"] = (name, fields[name])
    _check_unique(selected)
    return FeatureSelection(
        refs=tuple(selected),
        columns=tuple(column for column, _ in selected.values()),
        types=tuple(kind for _, kind in selected.values()),
        join_keys=tuple(keys.values()),
        request_fields=tuple(request_fields),
        on_demand=tuple(demand),
        service=service,
        request_types=tuple(request_fields.values()),
    )


def full_name(ref: str) -> str:
    """Feast's full feature name of a `view:feature` ref: `view__feature`."""
    return ref.replace(":", "__", 1)


def _split_refs(refs: Sequence[str]) -> list[tuple[str, list[str]]]:
    by_view: dict[str, list[str]] = {}
    for ref in refs:
        view, sep, name = ref.partition(":")
        if not sep or not view or not name:
            raise FeatureStoreError(f"a feature reference is `view:feature`, got {ref!r}")
        by_view.setdefault(view, []).append(name)
    return list(by_view.items())


def _join_key(name: str, dtype: str, view: str) -> JoinKey:
    kind = _KEY_KINDS.get(dtype)
    if kind is None:
        raise FeatureStoreError(
            f"join key {name!r} of {view!r} is {dtype}; the rig serves String, Int64 and Int32 join keys"
        )
    return JoinKey(name, kind)


def _check_unique(selected: Mapping[str, tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for ref, (column, _) in selected.items():
        if column in seen:
            raise FeatureStoreError(f"{seen[column]} and {ref} are both named {column!r}: select one of them")
        seen[column] = ref


def _keys(selection: FeatureSelection) -> str:
    return ", ".join(f"{key.name} ({key.kind})" for key in selection.join_keys)
