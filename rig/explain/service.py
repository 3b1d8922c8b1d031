"""Explanations of one request for one model: the same enrich and transform as the prediction path,
then the explainer, cached by feature hash (model version + transformed row)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import msgspec
import numpy as np

from rig.errors import ExplainerError
from rig.explain.explainer import Explainer, explanation_key
from rig.features.enrich import enrich, invalid_request_values
from rig.features.online_reader import OnlineReader
from rig.models.dense import MODEL_NTHREAD
from rig.models.registry import ModelRegistry
from rig.transform.fitted import FittedTransform
from rig.transform.layout import InputLayout
from rig.transform.model_inputs import column_index
from rig.wire.records import Explanation, Request, to_plain

REFERENCE_ROWS = 2_000


class ExplanationCache:
    """A bounded LRU of explanations by explanation key, shared by threads (the explain topic's
    consumer and the web server's explain threads): the lock keeps one thread's eviction from landing
    between another's lookup and its reordering, a `KeyError` that would end the explainer thread."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Explanation] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Explanation | None:
        """The explanation cached under `key` (now the most recently used), or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: str, explanation: Explanation) -> None:
        """Cache `explanation` under `key`, evicting the least recently used beyond `max_entries`."""
        with self._lock:
            self._entries[key] = explanation
            self._entries.move_to_end(key)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class ExplanationService:
    """Explainers per model version (built on first use) and a bounded cache of explanations."""

    def __init__(self, registry: ModelRegistry, max_cached: int = 10_000) -> None:
        self.registry = registry
        self._explainers: dict[str, tuple[Explainer, np.ndarray]] = {}
        self._cache = ExplanationCache(max_cached)

    def explain(
        self, request: Request, version: str, reader: OnlineReader, layout: InputLayout
    ) -> Explanation:
        """The Explanation record of `version`'s score for `request` (the only place one is built).

        Args:
            reader: reads the features of every model in `layout`.
            layout: the serving layout; `version` must be one of its models (it says which
                transform the model reads and from which columns).

        Raises:
            ExplainerError: the model is not served, or the request cannot be transformed (its
                reason says why).
        """
        if version not in layout.models:
            raise ExplainerError(f"model {version} is not served (only routed models are explained)")
        transform = layout.blocks[layout.models[version].block].transform
        fields = reader.selection.request_fields
        unfit = invalid_request_values([request], fields, reader.selection.request_types)
        if unfit:  # before the read, which would fail on it
            raise ExplainerError(unfit[0][1])
        online = reader.read([request.entity_id], {name: [request.features.get(name)] for name in fields})
        enriched = enrich([request], online.columns, online.found, request_fields=fields)
        if enriched.rejected:
            raise ExplainerError(enriched.rejected[0][1])
        result = layout.transform_for(version, enriched.columns, now=[request.event_time])
        if not result.row_ok[0]:
            raise ExplainerError(result.reasons[0])
        explainer, columns = self._explainer(version, transform)
        row = result.values[0, columns]
        key = explanation_key(version, row)
        cached = self._cache.get(key)
        if cached is None:  # explained outside the cache's lock: it takes far longer than any cache use
            found = {**explainer.explain(row).to_dict(), "model_version": version, "explanation_key": key}
            ids = {"request_id": request.request_id, "entity_id": request.entity_id}
            cached = msgspec.convert(to_plain({**ids, **found}), Explanation)
            self._cache.put(key, cached)
        return msgspec.structs.replace(cached, request_id=request.request_id, entity_id=request.entity_id)

    def _explainer(self, version: str, transform: FittedTransform) -> tuple[Explainer, np.ndarray]:
        if version not in self._explainers:
            meta = self.registry.meta(version)
            columns = column_index(transform.output_columns, meta.features)
            reference = self._reference(version, transform)[:, columns]
            booster = self.registry.load(version)
            booster.set_param({"nthread": MODEL_NTHREAD})
            explainer = Explainer(booster, list(meta.features), reference)
            self._explainers[version] = (explainer, columns)
        return self._explainers[version]

    def _reference(self, version: str, transform: FittedTransform) -> np.ndarray:
        """Transformed rows of the model's training data: what anchors and counterfactuals sample from."""
        frame = self.registry.reference(version)
        if frame is None:
            raise ExplainerError(f"model {version} was stored without reference rows to explain against")
        sample = frame.sample(min(REFERENCE_ROWS, len(frame)), random_state=0)
        result = transform.transform(sample)
        return result.values[result.row_ok]
