"""The promoter's saved state: its tests continue across restarts and moves (`save_promoter_state`).

Written out here, not imported from `rig.feedback.metadata`: a migration is what the schema was at
its revision, whatever the store's tables become later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create `promoter_state`: one row per promoter scope."""
    op.create_table(
        "promoter_state",
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("joined_offset", sa.BigInteger, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("saved_at_ms", sa.BigInteger, nullable=False),
    )
