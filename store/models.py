"""Tables of the store. Migrations in ``store/migrations`` create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Pool(Base):
    __tablename__ = "pools"

    id: Mapped[str] = mapped_column(String(55), primary_key=True)
    # FCM: the service account file as given (JSON text); it holds a private key.
    fcm_service_account: Mapped[str | None] = mapped_column(Text)
    fcm_project_id: Mapped[str | None] = mapped_column(String(128))
    # FCM pushes a minute that the workers send for this pool's project (None: the default; 0006)
    fcm_rate: Mapped[int | None] = mapped_column(Integer)
    # the pool's coalescing window per platform, seconds (None: PUSHSYNC_COALESCE_WINDOW; 0007)
    apns_window: Mapped[float | None] = mapped_column(Float)
    fcm_window: Mapped[float | None] = mapped_column(Float)
    # APNs token auth: the .p8 key (PEM), its key id, the team id and the app's bundle id.
    apns_key: Mapped[str | None] = mapped_column(Text)
    apns_key_id: Mapped[str | None] = mapped_column(String(32))
    apns_team_id: Mapped[str | None] = mapped_column(String(32))
    apns_topic: Mapped[str | None] = mapped_column(String(255))
    # the secret that the app's back end signs identity tokens with (sealed like the keys; 0004)
    token_secret: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        # a hash, not the token: PostgreSQL cannot index a 4 kB token (migration 0002)
        UniqueConstraint("token_hash", "platform", "pool_id", name="uq_devices_token_hash_platform_pool"),
        Index("ix_devices_pool_identity", "pool_id", "identity_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pool_id: Mapped[str] = mapped_column(String(55), ForeignKey("pools.id", ondelete="CASCADE"))
    identity_id: Mapped[str] = mapped_column(String(55))
    platform: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(4096))
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the token
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    deactivated_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deactivated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Subscription(Base):
    __tablename__ = "subscriptions"

    device_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    dataset_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


PENDING = "sync_count IS NOT NULL AND (planned_count IS NULL OR planned_count < sync_count)"


class Dataset(Base):
    """A dataset the store knows for an identity: the newest sync count accepted (``sync_count``,
    None: never), the newest one whose pushes were planned (``planned_count``; migration 0005) and
    the device whose change made the accepted one (not notified of it)."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_pending", "updated_at", postgresql_where=text(PENDING),
                            sqlite_where=text(PENDING)),)

    pool_id: Mapped[str] = mapped_column(String(55), ForeignKey("pools.id", ondelete="CASCADE"),
                                         primary_key=True)
    identity_id: Mapped[str] = mapped_column(String(55), primary_key=True)
    dataset_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    sync_count: Mapped[int | None] = mapped_column(BigInteger)
    planned_count: Mapped[int | None] = mapped_column(BigInteger)
    origin_device_id: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_created", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # "event" or "delivery"
    reason: Mapped[str] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # JSON: the event, or the delivery item
    pool_id: Mapped[str | None] = mapped_column(String(128))
    platform: Mapped[str | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Outbox(Base):
    """A delivery batch that ingest enqueued and deliver has not settled yet (migration 0003)."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "due_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)  # the batch as it went on the queue (JSON)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """A key for the HTTP API: its pool, its scopes and a SHA-256 of the key (migration 0004)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_pool", "pool_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pool_id: Mapped[str] = mapped_column(String(55), ForeignKey("pools.id", ondelete="CASCADE"))
    scopes: Mapped[str] = mapped_column(String(64))  # comma-separated: device, producer, admin
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
