"""The explanation service: its explainers predict as the backbone does (one XGBoost thread); the
explanation cache is bounded, least recently used out first, shared safely between threads."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from rig.config import RigSettings
from rig.explain.service import ExplanationCache, ExplanationService
from rig.models.dense import MODEL_NTHREAD
from rig.models.registry import ModelRegistry
from rig.models.train import train_and_register
from rig.wire.records import AnchorRule, Explanation, ShapValues
from sim.world import FEATURE_NAMES, as_of_features, labelled_events, make_world

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_explainers_predict_with_the_backbones_thread_count(tmp_path: Path) -> None:
    # The model is trained with 2 threads; an explainer's searches beside the hot path must not be.
    world = make_world(seed=3, n_entities=300, days=4)
    events = labelled_events(world, 600, seed=4)
    frame = as_of_features(world, events["entity_id"], events["event_timestamp"]).assign(
        label=events["label"]
    )
    defaults = RigSettings()
    settings = RigSettings(home=tmp_path, transform_spec=REPO_ROOT / defaults.transform_spec)
    meta = train_and_register(settings, frame, FEATURE_NAMES, rounds=5).meta
    registry = ModelRegistry(settings.model_dir)

    explainer, _ = ExplanationService(registry)._explainer(
        meta.version, registry.load_transform(meta.transform_version)
    )

    trained = json.loads(registry.load(meta.version).save_config())["learner"]["generic_param"]["nthread"]
    assert trained != str(MODEL_NTHREAD)
    config = json.loads(explainer.booster.save_config())
    assert config["learner"]["generic_param"]["nthread"] == str(MODEL_NTHREAD)


def explanation(key: str) -> Explanation:
    shap = ShapValues(margin=0.0, score=0.5, bias=0.0, top=[], contributions={})
    anchor = AnchorRule(
        rule="", conditions=[], decision=True, precision=1.0, precision_lower=1.0, coverage=1.0,
        n_samples=0, met_target=True,
    )  # fmt: skip
    return Explanation(
        request_id="r", entity_id="e", model_version="m.1", explanation_key=key, score=0.5,
        decision=True, threshold=0.5, shap=shap, anchor=anchor,
    )  # fmt: skip


class YieldingKey(str):
    """An explanation key whose hashing lets other threads run, as a thread switch may at any moment:
    every dictionary step of the cache on it interleaves with the other threads' steps."""

    def __hash__(self) -> int:
        time.sleep(0)
        return str.__hash__(self)


def test_the_least_recently_used_explanation_goes_first() -> None:
    cache = ExplanationCache(max_entries=2)
    cache.put("a", explanation("a"))
    cache.put("b", explanation("b"))
    assert cache.get("a") is not None
    cache.put("c", explanation("c"))
    assert cache.get("b") is None, "b was used least recently"
    assert [cache.get(key) is not None for key in ("a", "c")] == [True, True]


def test_threads_sharing_the_cache_never_raise() -> None:
    cache = ExplanationCache(max_entries=2)
    keys = [YieldingKey(f"key-{i}") for i in range(5)]
    values = {key: explanation(key) for key in keys}
    errors: list[BaseException] = []

    def use(offset: int) -> None:
        try:
            for i in range(500):
                key = keys[(i + offset) % len(keys)]
                if cache.get(key) is None:
                    cache.put(key, values[key])
        except BaseException as error:  # noqa: BLE001 - collected and reported by the test
            errors.append(error)

    threads = [threading.Thread(target=use, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(cache) <= 2
