"""Model checksums in the metadata store: recorded at registration, verified when a worker loads a
model, so a model file rewritten together with its meta.json is refused."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.cli.app import record_checksum
from rig.config import RigSettings
from rig.errors import MetadataError, ModelIntegrityError
from rig.feedback.metadata import MetadataStore
from rig.models.registry import META_FILE, MODEL_FILE, ModelMeta, ModelRegistry, sha256_of
from rig.serving.backbone import Backbone
from streams.runtime import VerifiedRegistry
from tests.unit.models.test_registry import FEATURES, small_booster


@pytest.fixture
def settings(tmp_path: Path) -> RigSettings:
    return RigSettings(home=tmp_path / "home", metadata_url=f"sqlite:///{tmp_path / 'metadata.db'}")


@pytest.fixture
def store(settings: RigSettings) -> Iterator[MetadataStore]:
    opened = MetadataStore(settings.resolved_metadata_url)
    opened.create_schema()
    yield opened
    opened.close()


def registered(settings: RigSettings) -> tuple[ModelRegistry, ModelMeta]:
    """A model stored and recorded the way `rig train` and `rig register` do it."""
    registry = ModelRegistry(settings.model_dir)
    meta = registry.save(small_booster(0), "risk", FEATURES)
    record_checksum(settings, meta)
    return registry, meta


def rewrite_with_meta(registry: ModelRegistry, version: str) -> None:
    """Replace a model file by another model and write its checksum into meta.json, as someone who
    can write the model folder could."""
    folder = registry.folder(version)
    data = bytes(small_booster(1).save_raw(raw_format="ubj"))
    (folder / MODEL_FILE).write_bytes(data)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "sha256": sha256_of(data)}))


def test_registering_a_model_records_its_checksum(settings: RigSettings, store: MetadataStore) -> None:
    _, meta = registered(settings)

    assert store.model_checksum(meta.version) == meta.sha256
    assert store.model_checksum("risk.9") is None


def test_a_registered_model_loads_when_its_file_matches_the_record(
    settings: RigSettings, store: MetadataStore
) -> None:
    _, meta = registered(settings)
    backbone = Backbone(VerifiedRegistry(settings.model_dir, store))

    assert backbone.ensure_loaded([meta.version]) == (meta.version,)
    backbone.close()


def test_a_model_rewritten_with_its_meta_json_is_refused_at_load(
    settings: RigSettings, store: MetadataStore
) -> None:
    registry, meta = registered(settings)
    rewrite_with_meta(registry, meta.version)
    registry.load(meta.version)  # meta.json agrees with the new file: its own check cannot tell
    backbone = Backbone(VerifiedRegistry(settings.model_dir, store))

    with pytest.raises(
        ModelIntegrityError, match=rf"checksum mismatch for {meta.version}: the metadata store"
    ):
        backbone.ensure_loaded([meta.version])
    assert backbone.loaded() == ()
    backbone.close()


def test_a_model_the_store_has_no_record_of_loads_with_a_warning(
    settings: RigSettings, store: MetadataStore, caplog: pytest.LogCaptureFixture
) -> None:
    meta = ModelRegistry(settings.model_dir).save(small_booster(0), "risk", FEATURES)  # never recorded
    verified = VerifiedRegistry(settings.model_dir, store)

    with caplog.at_level(logging.WARNING, logger="streams.runtime"):
        verified.load(meta.version)

    assert f"model {meta.version} has no checksum in the metadata store" in caplog.text


def test_registering_with_a_configured_store_that_cannot_be_opened_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings = RigSettings(home=tmp_path / "home", metadata_url=f"sqlite:///{blocker / 'metadata.db'}")
    meta = ModelRegistry(settings.model_dir).save(small_booster(0), "risk", FEATURES)

    with pytest.raises(MetadataError, match=f"cannot record model {meta.version}"):
        record_checksum(settings, meta)


def test_registering_without_a_configured_store_warns_when_the_default_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.write_text("")  # the default SQLite file lives under home, which cannot be a folder now
    settings = RigSettings(home=home, metadata_url=None)
    meta = ModelRegistry(tmp_path / "models").save(small_booster(0), "risk", FEATURES)

    record_checksum(settings, meta)

    assert f"warning: model {meta.version} is not recorded in the metadata store" in capsys.readouterr().err
