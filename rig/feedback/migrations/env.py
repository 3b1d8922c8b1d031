"""Alembic's entry point: run the pending migrations on the connection `rig.feedback.migrations.upgrade`
hands over, within its transaction (online only: the store always migrates a live database)."""

from alembic import context

context.configure(
    connection=context.config.attributes["connection"],
    # The store runs every upgrade in one transaction, on SQLite too (see MetadataStore.create_schema).
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
