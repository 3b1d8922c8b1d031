"""The promoter's evidence history: where every primary test stood, each time its status was recorded
(`record_promoter_evidence`; the dashboard draws it).

Written out here, not imported from `rig.feedback.metadata`: a migration is what the schema was at
its revision, whatever the store's tables become later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create `promoter_evidence`: one row per (golden, challenger, instant), indexed by instant for
    pruning."""
    op.create_table(
        "promoter_evidence",
        sa.Column("golden_version", sa.String(200), primary_key=True),
        sa.Column("challenger_version", sa.String(200), primary_key=True),
        sa.Column("at_ms", sa.BigInteger, primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("mean_gain", sa.Double, nullable=False),
        sa.Column("ci_low", sa.Double),
        sa.Column("ci_high", sa.Double),
        sa.Column("p_value", sa.Double, nullable=False),
        sa.Column("min_effect", sa.Double, nullable=False),
    )
    op.create_index("ix_promoter_evidence_at_ms", "promoter_evidence", ["at_ms"])
