"""datasets keep the newest count accepted and the newest count whose pushes were planned

``sync_count`` stays the newest sync count accepted for the dataset; ``planned_count`` is the
newest one whose pushes were written to the outbox (one source of truth for coalescing: a flush
pushes whatever is accepted and not yet planned), ``origin_device_id`` the device whose change
made the accepted count (it is not notified of it). ``ix_datasets_pending`` serves the
scheduler's sweep of datasets whose newest count was never planned.

Rows accepted in the ten minutes before the upgrade are left unplanned, so that a count that an
older worker held in a coalescing window (kept in Redis only) is pushed once more instead of
being lost; a device ignores a count it has already.

Revision ID: 0005
Revises: 0004
"""
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PENDING = "sync_count IS NOT NULL AND (planned_count IS NULL OR planned_count < sync_count)"


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("planned_count", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("origin_device_id", sa.String(36), nullable=True))
    datasets = sa.table("datasets", sa.column("sync_count", sa.BigInteger()),
                        sa.column("planned_count", sa.BigInteger()),
                        sa.column("updated_at", sa.DateTime(timezone=True)))
    cutoff = datetime.now(UTC) - timedelta(minutes=10)
    op.execute(datasets.update().where(datasets.c.updated_at < cutoff)
               .values(planned_count=datasets.c.sync_count))
    op.create_index("ix_datasets_pending", "datasets", ["updated_at"], postgresql_where=sa.text(PENDING),
                    sqlite_where=sa.text(PENDING))


def downgrade() -> None:
    op.drop_index("ix_datasets_pending", "datasets")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("origin_device_id")
        batch.drop_column("planned_count")
