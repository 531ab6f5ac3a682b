"""The Redis that carries the queues, reached directly or through Redis Sentinel.

``PUSHSYNC_BROKER_URL`` is either one ``redis://`` (``rediss://``) URL or a ``;``-separated list
of ``sentinel://host:port`` addresses; with Sentinel, the first address may carry the master's
password and database (``sentinel://:password@host:port/0``) and ``PUSHSYNC_SENTINEL_MASTER``
names the master. Celery (kombu's ``sentinel`` transport) and the project's own Redis calls
(retry set, metrics, the scheduler's lock, rate limits, health beats) both ask the sentinels
where the master is, and ask again when a connection to it breaks, so a failover is ridden out
as a reconnect.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pushsync.sentinel import is_sentinel, parse_sentinel_url
from pushsync.settings import get_settings

# how long one sentinel may take to answer: a dead one must not hold up asking the next
SENTINEL_TIMEOUT = 1.0
# Every connection to Redis, the project's own and kombu's: a command waits at most REDIS_TIMEOUT
# for its answer (the longest block the project asks for is a second, dispatch.IDLE_WAIT), a
# connect at most REDIS_CONNECT_TIMEOUT; TCP keepalives, and a PING before reusing a connection
# idle for HEALTH_CHECK seconds (kombu also drops a consumer's BRPOP connection whose answer is
# that overdue). A Redis that stops answering is then an error within seconds, not a wait.
REDIS_TIMEOUT, REDIS_CONNECT_TIMEOUT, HEALTH_CHECK = 5.0, 3.0, 5
BOUNDS = {"socket_timeout": REDIS_TIMEOUT, "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
          "socket_keepalive": True, "health_check_interval": HEALTH_CHECK}


def broker_url(settings) -> str:
    """``PUSHSYNC_BROKER_URL`` with ``PUSHSYNC_BROKER_PASSWORD`` put into its first address when that
    address has no password of its own (the URL's own password wins)."""
    from urllib.parse import quote

    url, password = settings.broker_url, settings.broker_password
    if not password:
        return url
    first, sep, rest = url.partition(";")
    parts = urlsplit(first.strip())
    if parts.password is not None:
        return url
    user = parts.username or ""
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rsplit('@', 1)[-1]}"
    return parts._replace(netloc=netloc).geturl() + sep + rest


def transport_options(settings) -> dict:
    """What kombu needs besides the URL: the bounds on its connections and, with Sentinel, the
    master's name and the sentinels' timeouts."""
    if not is_sentinel(settings.broker_url):
        return dict(BOUNDS)
    return {**BOUNDS, "master_name": settings.sentinel_master,
            "sentinel_kwargs": {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}}


def redis_client(settings=None, **kwargs):
    """A ``redis.Redis`` on the broker's Redis (its master, with Sentinel), bounded (``BOUNDS``);
    keyword arguments go to the connections and win (``socket_timeout=...``)."""
    import redis
    from redis.sentinel import Sentinel

    kwargs = {**BOUNDS, **kwargs}
    if settings is None:
        settings = get_settings()
    url = broker_url(settings)
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    addr = parse_sentinel_url(url)
    sentinel = Sentinel(list(addr.sentinels),
                        sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT,
                                         "socket_connect_timeout": SENTINEL_TIMEOUT})
    return sentinel.master_for(settings.sentinel_master, db=addr.db, username=addr.username,
                               password=addr.password, **kwargs)
