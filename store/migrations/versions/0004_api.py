"""the HTTP API: per-pool API keys (hashed) and the pool's identity-token signing secret

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("pools") as batch:
        batch.add_column(sa.Column("token_secret", sa.Text(), nullable=True))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("pool_id", sa.String(55), sa.ForeignKey("pools.id", ondelete="CASCADE"), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_index("ix_api_keys_pool", "api_keys", ["pool_id"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_pool", "api_keys")
    op.drop_table("api_keys")
    with op.batch_alter_table("pools") as batch:
        batch.drop_column("token_secret")
