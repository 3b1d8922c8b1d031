"""`rig metadata`: the metadata store's schema migrations and its retention.

The store is the one `RIG_METADATA_URL` names (a SQLite file under `RIG_HOME` by default). SQLAlchemy
and Alembic are imported inside the commands, so `rig --help` stays quick.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from rig.config import RigSettings
from rig.errors import MetadataError

if TYPE_CHECKING:
    from rig.feedback.metadata import MetadataStore

metadata_app = typer.Typer(
    help="The metadata store (SQLite or PostgreSQL): schema migrations and retention.", no_args_is_help=True
)

DAY_MS = 86_400_000


@contextmanager
def upgraded_store(config: RigSettings) -> Iterator[MetadataStore]:
    """The configured store with its schema at the latest revision, closed afterwards; a store that
    cannot be opened or migrated ends the command with its reason (exit code 1)."""
    from rig.feedback.metadata import MetadataStore

    try:
        store = MetadataStore(config.resolved_metadata_url)
        try:
            store.create_schema()
            yield store
        finally:
            store.close()
    except MetadataError as error:
        typer.secho(f"failed: {error}", fg="red", err=True)
        raise typer.Exit(1) from error


@metadata_app.command("upgrade")
def upgrade() -> None:
    """Migrate the metadata store's schema to the latest revision (what every worker does on start):
    creates a new store, upgrades an older one, adopts one written before migrations with its rows."""
    with upgraded_store(RigSettings()) as store:
        typer.echo(f"metadata store {store.url} is at revision {store.schema_revision()}")


@metadata_app.command("prune")
def prune(
    days: Annotated[
        float | None,
        typer.Option(min=0, help="Keep this many days of windows; default RIG_METADATA_RETENTION_DAYS."),
    ] = None,
) -> None:
    """Delete the metadata windows (model metrics, label delays, feature statistics, serving windows)
    and promoter statuses older than the retention. Models, routing history and decisions are kept."""
    config = RigSettings()
    kept_days = config.metadata_retention_days if days is None else days
    with upgraded_store(config) as store:
        deleted = store.prune(int(time.time() * 1000), round(kept_days * DAY_MS))
        counts = ", ".join(f"{table} {count}" for table, count in deleted.items())
        total = sum(deleted.values())
        typer.echo(f"pruned {total} row(s) older than {kept_days:g} day(s) from {store.url}: {counts}")
