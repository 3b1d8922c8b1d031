"""Schema migrations of the metadata store (Alembic), configured here: no alembic.ini.

`versions/` holds one file per change of a table, oldest first (`0001_baseline.py` is the schema as it
was before migrations existed). A change to a table in `rig.feedback.metadata` needs a new file there
whose `down_revision` is the latest one's `revision`, with plain `alembic.op` calls that work on SQLite
and PostgreSQL; tests/unit/feedback/test_metadata_migrations.py fails until the migrations build the
tables the store uses.
"""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from rig.errors import MetadataError

_DIRECTORY = Path(__file__).parent
_RUNNING = threading.Lock()
"""Alembic's `context` and `op` are process-wide proxies: two migrations at once in one process would
run on each other's connections. Processes exclude each other through the database."""


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    # Config values go through configparser interpolation: a '%' in the install path must be doubled.
    config.set_main_option("script_location", str(_DIRECTORY).replace("%", "%%"))
    config.attributes["connection"] = connection  # what env.py migrates
    return config


def upgrade(connection: sa.Connection) -> None:
    """Migrate the database of `connection` to the latest revision, inside the connection's transaction.

    A database without `alembic_version` is new or was written before migrations existed: the
    baseline creates the tables it lacks and keeps the ones it has (with their rows).

    Raises:
        MetadataError: the database is at a revision these migrations do not know (a newer rig wrote it).
    """
    try:
        with _RUNNING:
            command.upgrade(_config(connection), "head")
    except CommandError as error:
        raise MetadataError(
            f"cannot migrate the metadata store (written by a newer rig?): {error}"
        ) from error


def current_revision(connection: sa.Connection) -> str | None:
    """The revision the database of `connection` is at; None when no migration was applied to it."""
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The latest revision in `versions/`."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # only a broken install lacks them
        raise MetadataError(f"no metadata migrations found in {_DIRECTORY / 'versions'}")
    return head
