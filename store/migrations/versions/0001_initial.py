"""pools, devices, subscriptions, datasets, dead letters

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("id", sa.String(55), primary_key=True),
        sa.Column("fcm_service_account", sa.Text()),
        sa.Column("fcm_project_id", sa.String(128)),
        sa.Column("apns_key", sa.Text()),
        sa.Column("apns_key_id", sa.String(32)),
        sa.Column("apns_team_id", sa.String(32)),
        sa.Column("apns_topic", sa.String(255)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("pool_id", sa.String(55), sa.ForeignKey("pools.id", ondelete="CASCADE"), nullable=False),
        sa.Column("identity_id", sa.String(55), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("token", sa.String(4096), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("deactivated_reason", sa.String(255)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deactivated_at", TS),
        sa.UniqueConstraint("token", "platform", "pool_id", name="uq_devices_token_platform_pool"),
    )
    op.create_index("ix_devices_pool_identity", "devices", ["pool_id", "identity_id"])
    op.create_table(
        "subscriptions",
        sa.Column("device_id", sa.String(36), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("dataset_name", sa.String(128), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "datasets",
        sa.Column("pool_id", sa.String(55), sa.ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("identity_id", sa.String(55), primary_key=True),
        sa.Column("dataset_name", sa.String(128), primary_key=True),
        sa.Column("sync_count", sa.BigInteger()),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("pool_id", sa.String(128)),
        sa.Column("platform", sa.String(16)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_dead_letters_created", "dead_letters", ["created_at"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("datasets")
    op.drop_table("subscriptions")
    op.drop_index("ix_devices_pool_identity", "devices")
    op.drop_table("devices")
    op.drop_table("pools")
