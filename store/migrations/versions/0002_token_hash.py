"""devices are unique by a hash of the token, so that tokens of any allowed length fit the index

PostgreSQL's B-tree refuses index rows over about 2.7 kB; FCM tokens may be up to 4 kB, and the
contract allows 4,096 characters. The unique key becomes (sha256 of the token, platform, pool).

Revision ID: 0002
Revises: 0001
"""
import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("token_hash", sa.String(64), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, token FROM devices")).all()
    for start in range(0, len(rows), 1000):
        conn.execute(sa.text("UPDATE devices SET token_hash = :h WHERE id = :id"),
                     [{"id": r[0], "h": hashlib.sha256(r[1].encode()).hexdigest()} for r in rows[start:start + 1000]])
    with op.batch_alter_table("devices") as batch:
        batch.alter_column("token_hash", existing_type=sa.String(64), nullable=False)
        batch.drop_constraint("uq_devices_token_platform_pool", type_="unique")
        batch.create_unique_constraint("uq_devices_token_hash_platform_pool", ["token_hash", "platform", "pool_id"])


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_constraint("uq_devices_token_hash_platform_pool", type_="unique")
        batch.create_unique_constraint("uq_devices_token_platform_pool", ["token", "platform", "pool_id"])
        batch.drop_column("token_hash")
