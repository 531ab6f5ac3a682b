"""Clients that send slowly, against a real `pushsync api`: 1,000 connections that trickle their
request heads do not keep a normal client from registering a device within a second, and the
server closes each of them at the head deadline instead of holding them for as long as they like."""

from __future__ import annotations

import socket
import time

from api.protocol import HEAD_DEADLINE
from tests.conftest import POOL
from tests.e2e.harness import new_identity

from .conftest import identity_token
from .harness import paths

SLOW = 1000


def test_a_thousand_slow_clients_neither_stop_a_normal_one_nor_stay_for_ever(api, secrets):
    slow = []
    for _ in range(SLOW):
        s = socket.create_connection(("127.0.0.1", api.port), timeout=5)
        s.sendall(b"POST /identitypools/x/events HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        slow.append(s)
    opened = time.monotonic()
    for s in slow[:50]:
        s.sendall(b"X")  # a byte now and then: uvicorn's keep-alive timer alone would start again
    ident = new_identity()
    started = time.monotonic()
    r = api.call("POST", paths(POOL, ident)["register"], {"Platform": "GCM", "Token": f"fcm-slow-{ident[-8:]}"},
                 identity_token(secrets, identity=ident))
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert took < 1.0, f"a normal registration took {took:.2f} s beside {SLOW} slow clients"
    closed = 0
    for s in slow:
        s.settimeout(max(0.1, opened + HEAD_DEADLINE + 5 - time.monotonic()))
        try:
            closed += s.recv(1024) == b""  # the server hung up (no answer: the head never ended)
        except ConnectionResetError:
            closed += 1
        except TimeoutError:
            pass  # still open
        finally:
            s.close()
    assert closed == SLOW, f"{SLOW - closed} slow connections still open {HEAD_DEADLINE + 5:.0f} s later"
    print(f"\n[slow clients] registration beside {SLOW} slow connections: {took * 1000:.0f} ms; "
          f"all closed by the server within {HEAD_DEADLINE:.0f} s + 5")
