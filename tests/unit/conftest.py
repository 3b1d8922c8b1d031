"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.feedback.metadata import MetadataStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    """An empty metadata store on a SQLite file of the test's own."""
    opened = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    opened.create_schema()
    yield opened
    opened.close()
