"""Model artifacts, versions and checksums. Roles (golden, experiments) live on the control topic.

A model version is stored as XGBoost UBJ (never pickle) beside a `meta.json` holding its SHA-256.
Loading verifies the checksum first, so a corrupted or swapped file is refused.

Versions reach the registry from outside (the control topic, `?model=` of the explain endpoint, the
CLI), so a version is only ever joined into a path once it has the form the registry gives versions
(`VERSION_PATTERN`): `/etc/x` or `../x` never name a file outside the registry's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rig.errors import ModelIntegrityError, RegistryError

if TYPE_CHECKING:
    import pandas as pd
    import xgboost

    from rig.transform.fitted import FittedTransform

MODEL_FILE = "model.ubj"
TRANSFORMS_DIR = "transforms"
META_FILE = "meta.json"
REFERENCE_FILE = "reference.parquet"
REFERENCE_ROWS = 10_000
"""Raw feature rows of the training data kept with a model: the reference of serving statistics
(PSI) and the sample explanations search in."""
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""A model name: a lowercase slug. Patterns here are matched whole (`fullmatch`: `$` would let a
trailing newline through)."""
VERSION_PATTERN = re.compile(rf"{NAME_PATTERN.pattern}\.[1-9][0-9]*")
"""`<name>.<number>`, as `ModelRegistry.save` numbers versions."""
TRANSFORM_VERSION_PATTERN = re.compile(r"[0-9a-f]{16}")
"""The version of a fitted transform: 16 hex digits of a SHA-256."""


@dataclass(frozen=True)
class ModelMeta:
    """What is recorded about one stored model version."""

    version: str
    name: str
    sha256: str
    features: tuple[str, ...]
    created_at: str
    transform_version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, str | int | float] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    """The Feast features its transform reads (`rig.features.selection.FeatureSelection.to_dict`);
    None for a model stored before selections were recorded (the repo's default selection)."""


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


class ModelRegistry:
    """Stored model versions under one folder: `<root>/<version>/{model.ubj,meta.json}`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(
        self,
        booster: xgboost.Booster,
        name: str,
        features: Sequence[str],
        transform_version: str = "",
        metrics: dict[str, float] | None = None,
        training: dict[str, str | int | float] | None = None,
        reference: pd.DataFrame | None = None,
        selection: dict[str, Any] | None = None,
    ) -> ModelMeta:
        """Store a trained booster as the next version of `name`.

        `reference` is raw (untransformed) feature rows of its training data; up to `REFERENCE_ROWS`
        of them are kept (see `reference`).

        Raises:
            RegistryError: the name is not a lowercase slug, or the booster's features disagree.
        """
        if not NAME_PATTERN.fullmatch(name):
            raise RegistryError(f"model name {name!r} must match {NAME_PATTERN.pattern}")
        if booster.feature_names is not None and list(booster.feature_names) != list(features):
            raise RegistryError("booster feature names differ from the features given")
        data = bytes(booster.save_raw(raw_format="ubj"))
        version = f"{name}.{self._next_number(name)}"
        meta = ModelMeta(
            version=version,
            name=name,
            sha256=sha256_of(data),
            features=tuple(features),
            created_at=datetime.now(UTC).isoformat(),
            transform_version=transform_version,
            metrics=dict(metrics or {}),
            training=dict(training or {}),
            selection=selection,
        )
        folder = self.root / version
        folder.mkdir(parents=True)
        (folder / MODEL_FILE).write_bytes(data)
        if reference is not None:
            sample = reference.sample(min(REFERENCE_ROWS, len(reference)), random_state=0)
            sample.reset_index(drop=True).to_parquet(folder / REFERENCE_FILE, index=False)
        _write_json(folder / META_FILE, asdict(meta))
        return meta

    def folder(self, version: str) -> Path:
        """The folder of a registered version: the only way a version becomes a path.

        Raises:
            RegistryError: `version` does not have the form of a version (`<name>.<number>`), or no
                such version is stored.
        """
        if not VERSION_PATTERN.fullmatch(version):
            raise RegistryError(
                f"{version!r} is not a model version: expected <name>.<number> with a name matching "
                f"{NAME_PATTERN.pattern}"
            )
        folder = self.root / version
        if not (folder / META_FILE).is_file():
            raise RegistryError(f"unknown model version {version!r} in {self.root}")
        return folder

    def reference(self, version: str) -> pd.DataFrame | None:
        """Raw feature rows of `version`'s training data, or None when none were stored with it.

        Raises:
            RegistryError: not a registered version (see `folder`).
        """
        import pandas as pd

        path = self.folder(version) / REFERENCE_FILE
        return pd.read_parquet(path) if path.is_file() else None

    def meta(self, version: str) -> ModelMeta:
        """Recorded metadata of a version.

        Raises:
            RegistryError: not a registered version (see `folder`).
        """
        raw = json.loads((self.folder(version) / META_FILE).read_text())
        raw["features"] = tuple(raw["features"])
        return ModelMeta(**raw)

    def versions(self) -> list[ModelMeta]:
        """Every stored version, oldest first."""
        names = [path.parent.name for path in self.root.glob(f"*/{META_FILE}")]
        metas = [self.meta(name) for name in names if VERSION_PATTERN.fullmatch(name)]
        return sorted(metas, key=lambda meta: meta.created_at)

    def load_bytes(self, version: str) -> bytes:
        """The artifact's bytes, after checking them against the recorded SHA-256.

        Raises:
            RegistryError: not a registered version (see `folder`).
            ModelIntegrityError: the file is missing or its checksum differs from the recorded one.
        """
        meta = self.meta(version)
        path = self.folder(version) / MODEL_FILE
        if not path.is_file():
            raise ModelIntegrityError(f"model file missing for {version}: {path}")
        data = path.read_bytes()
        actual = sha256_of(data)
        if actual != meta.sha256:
            raise ModelIntegrityError(
                f"checksum mismatch for {version}: recorded {meta.sha256[:16]}…, file has {actual[:16]}…; "
                "refusing to load a model that is not the one registered"
            )
        return data

    def load(self, version: str) -> xgboost.Booster:
        """A verified booster for `version` (see `load_bytes`)."""
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(self.load_bytes(version)))
        booster.feature_names = list(self.meta(version).features)
        return booster

    def save_transform(self, transform: FittedTransform) -> str:
        """Store a fitted transform under its version (idempotent) and return the version."""
        path = self.root / TRANSFORMS_DIR / f"{transform.version}.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(transform.to_json())
            os.replace(temporary, path)
        return transform.version

    def load_transform(self, version: str) -> FittedTransform:
        """The fitted transform stored under `version` (its version is re-checked on load).

        Raises:
            RegistryError: `version` is not the version of a fitted transform, or no such transform.
        """
        from rig.transform.fitted import FittedTransform

        if not TRANSFORM_VERSION_PATTERN.fullmatch(version):
            raise RegistryError(f"{version!r} is not a transform version (16 hex digits)")
        path = self.root / TRANSFORMS_DIR / f"{version}.json"
        if not path.is_file():
            raise RegistryError(f"unknown transform version {version!r} in {self.root / TRANSFORMS_DIR}")
        return FittedTransform.from_json(path.read_text())

    def _next_number(self, name: str) -> int:
        numbers = [int(path.name.rsplit(".", 1)[1]) for path in self.root.glob(f"{name}.*") if path.is_dir()]
        return max(numbers, default=0) + 1


def _write_json(path: Path, payload: object) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(temporary, path)
