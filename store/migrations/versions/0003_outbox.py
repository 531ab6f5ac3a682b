"""the delivery outbox: every delivery batch ingest enqueues, until deliver settles it

A message can be lost between Redis and a worker at the moment Redis dies (kombu takes it with
BRPOP and records it as unacknowledged in a second command). Ingest records each batch here in
the transaction that advances the sync counts; deliver removes it once its outcomes are
recorded; the scheduler re-sends what stayed unsettled far longer than any message can wait.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_outbox_due", "outbox", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_due", "outbox")
    op.drop_table("outbox")
