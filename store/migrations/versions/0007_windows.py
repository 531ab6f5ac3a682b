"""pools get a coalescing window per platform (seconds; NULL: PUSHSYNC_COALESCE_WINDOW), for
`pool create --apns-window` and `--fcm-window` (worker.pacing)

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pools") as batch:
        batch.add_column(sa.Column("apns_window", sa.Float(), nullable=True))
        batch.add_column(sa.Column("fcm_window", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pools") as batch:
        batch.drop_column("fcm_window")
        batch.drop_column("apns_window")
