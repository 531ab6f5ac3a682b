"""Repository functions: the only code that writes SQL against the store.

Every function takes a ``Session`` inside a transaction the caller owns (``session_scope``),
and returns plain values, never ORM objects that outlive the session. One module per subject;
callers use ``from store import repo`` and the names below.
"""

from store.repo.apikeys import (
    Grant,
    api_key_grant,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    set_token_secret,
    token_secret,
)
from store.repo.common import NotFound
from store.repo.counts import accept, accepted_counts, counts, pending, plan, still_planned
from store.repo.dead_letters import (
    add_dead_letters,
    count_dead_letters,
    dead_letters_by_id,
    delete_dead_letters,
    list_dead_letters,
    purge_dead_letters,
)
from store.repo.devices import (
    Target,
    deactivate_devices,
    delete_inactive_devices,
    delivery_targets,
    import_devices,
    register_device,
    register_devices,
    token_hash,
    unregister_device,
)
from store.repo.outbox import add_outbox, defer_outbox, reschedule_outbox, settle_outbox, take_due_outbox
from store.repo.pools import (
    PoolCredentials,
    pool_credentials,
    pool_platforms,
    pool_summary,
    pool_versions,
    rekey_pools,
    require_pool,
    upsert_pool,
)
from store.repo.subscriptions import (
    known_datasets,
    resolve_many,
    resolve_statement,
    subscribe,
    subscribe_many,
    unsubscribe,
)

__all__ = [
    "Grant", "api_key_grant", "create_api_key", "list_api_keys", "revoke_api_key", "set_token_secret",
    "token_secret", "NotFound", "PoolCredentials", "Target", "accept", "accepted_counts", "add_dead_letters",
    "add_outbox", "counts",
    "defer_outbox", "reschedule_outbox", "settle_outbox", "take_due_outbox", "count_dead_letters",
    "dead_letters_by_id", "deactivate_devices", "delete_dead_letters", "delete_inactive_devices",
    "delivery_targets", "import_devices", "known_datasets", "list_dead_letters", "pending", "plan",
    "pool_credentials", "pool_platforms", "pool_summary", "pool_versions", "purge_dead_letters",
    "rekey_pools", "register_device", "register_devices", "require_pool", "resolve_many", "resolve_statement",
    "still_planned", "subscribe", "subscribe_many", "token_hash", "unregister_device", "unsubscribe", "upsert_pool",
]
