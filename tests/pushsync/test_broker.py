"""Every connection to Redis is bounded (pushsync/broker.py): a Redis that stops answering without
closing (blackholed: its side, or a proxy's, still acknowledges what is sent) is an error within
seconds for the project's own calls and for kombu's, which publishes and consumes the queues."""

from __future__ import annotations

import time

import pytest
import redis

from pushsync.broker import REDIS_TIMEOUT, redis_client
from pushsync.settings import load_settings
from tests.e2e.proxy import CuttableProxy

DB = 11


@pytest.fixture
def blackholed():
    proxy = CuttableProxy(6379)
    yield proxy
    proxy.blackhole(False)
    proxy.close()


def _settings(proxy):
    return load_settings({"PUSHSYNC_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/{DB}"})


def _fails_within(seconds, call, errors):
    started = time.monotonic()
    with pytest.raises(errors):
        call()
    took = time.monotonic() - started
    assert took < seconds, f"took {took:.1f} s"


def test_the_projects_redis_calls_fail_within_the_bound_when_redis_goes_silent(blackholed):
    client = redis_client(_settings(blackholed))
    assert client.ping()
    blackholed.blackhole(True)
    time.sleep(0.2)
    _fails_within(REDIS_TIMEOUT + 2, lambda: client.set("pushsync:test:bounds", "1"), redis.TimeoutError)
    blackholed.blackhole(False)
    client.connection_pool.disconnect()
    assert client.ping()


def test_kombus_connections_are_bounded_too(blackholed):
    """A publish (a producer's, or a worker's trigger) on a connection whose Redis went silent."""
    from kombu import Connection

    from pushsync.broker import transport_options

    settings = _settings(blackholed)
    with Connection(settings.broker_url, transport_options=transport_options(settings)) as conn:
        client = conn.default_channel.client
        assert client.ping()
        blackholed.blackhole(True)
        time.sleep(0.2)
        _fails_within(REDIS_TIMEOUT + 2, lambda: client.lpush("pushsync:test:bounds", "1"), redis.TimeoutError)
