"""What the emulators remember: every request received, connections opened, fault rules and
dead tokens. The control API reads and changes it."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    """Misbehave for matching requests: answer ``status`` (with ``reason`` and Retry-After),
    wait ``latency`` seconds first, ``drop`` the connection without an answer, or ``stall``: hold
    the request unanswered for as long as the rule stands, then drop it (a partitioned or frozen
    service: the requests of the stall get no answer, those after it are served)."""

    service: str = "any"  # "apns", "fcm", "oauth" (FCM's token endpoint) or "any" (apns and fcm)
    status: int | None = None
    reason: str | None = None
    retry_after: str | None = None
    count: int | None = None  # None: every matching request from now on
    token: str | None = None
    latency: float = 0.0
    drop: bool = False
    stall: bool = False
    # HTTP/2 (APNs, FCM): answer GOAWAY to this request, leaving it and every later stream of its
    # connection unprocessed (last stream id: the one before it), and close the connection a moment
    # later; FCM over HTTP/1.1: the connection dropped
    goaway: bool = False
    # answer with this raw body (and these extra headers) instead of a well-formed one:
    # malformed upstream answers, for the senders' robustness tests
    body: str | None = None
    headers: dict[str, str] | None = None

    def matches(self, service: str, token: str | None) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.service != service and (self.service != "any" or service == "oauth"):
            return False
        return self.token is None or self.token == token


# What FCM keeps for an offline device ("Non-collapsible and collapsible messages" in Firebase's
# documentation): the newest message of at most four collapse keys, and up to 100 without one
OFFLINE_KEYS = 4
OFFLINE_PLAIN = 100


@dataclass
class State:
    log_file: Any = None
    quiet: bool = False
    requests: list[dict] = field(default_factory=list)
    connections: Counter = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    dead_tokens: set[str] = field(default_factory=set)
    oauth_tokens: dict[str, dict] = field(default_factory=dict)
    oauth_issued: int = 0
    # HTTP/1.1 peers (host, port) seen per FCM endpoint: one entry per client connection
    peers: dict[str, set] = field(default_factory=dict)
    # APNs: SETTINGS_MAX_CONCURRENT_STREAMS for new connections (None: h2's default, 100), and the
    # streams refused past it, before and after the client acknowledged the setting
    apns_max_streams: int | None = None
    apns_refused: Counter = field(default_factory=Counter)
    # FCM's quota per project: at most fcm_quota requests (refused ones count) per window of
    # fcm_quota_window seconds, the windows counted from the first request (0: no quota)
    fcm_quota: int = 0
    fcm_quota_window: float = 60.0
    quota_used: dict[str, list] = field(default_factory=dict)  # project -> [window start, requests]
    quota_refused: Counter = field(default_factory=Counter)
    # Android devices that are offline: token -> the messages FCM keeps for it ("keyed": by
    # collapse key, the most recently sent last; "plain": those without one), ``keep_offline``
    offline: dict[str, dict[str, Any]] = field(default_factory=dict)

    def keep_offline(self, token: str, collapse_key: str | None, entry: dict) -> bool:
        """An accepted message for an offline device: kept to be delivered when it is back, as FCM
        keeps them: a newer message replaces an older one of the same collapse key, and at most
        OFFLINE_KEYS collapse keys are kept per device (FCM promises none in particular; this
        keeps the most recent ones); messages without one are kept each, and past OFFLINE_PLAIN of
        them FCM discards everything it kept for the device (the app hears onDeletedMessages).
        False when the device is online (delivered at once)."""
        kept = self.offline.get(token)
        if kept is None:
            return False
        if isinstance(collapse_key, str):
            keyed = kept.setdefault("keyed", {})
            keyed.pop(collapse_key, None)
            keyed[collapse_key] = entry
            while len(keyed) > OFFLINE_KEYS:
                del keyed[next(iter(keyed))]
        else:
            plain = kept.setdefault("plain", {})
            plain[len(plain)] = entry
            if len(plain) > OFFLINE_PLAIN:  # FCM discards every stored message (onDeletedMessages)
                kept.clear()
                kept["deleted"] = True
        return True

    def over_quota(self, project: str, now: float | None = None) -> float | None:
        """Count one request of ``project``; the seconds until its window ends when it is past the
        quota (the request is refused), else None."""
        if self.fcm_quota <= 0:
            return None
        now = time.monotonic() if now is None else now
        used = self.quota_used.setdefault(project, [now, 0])
        if now >= used[0] + self.fcm_quota_window:
            used[0] += (now - used[0]) // self.fcm_quota_window * self.fcm_quota_window
            used[1] = 0
        used[1] += 1
        if used[1] <= self.fcm_quota:
            return None
        self.quota_refused[project] += 1
        return used[0] + self.fcm_quota_window - now

    def saw_peer(self, what: str, peer) -> None:
        self.peers.setdefault(what, set()).add(tuple(peer) if peer else None)

    def fault_for(self, service: str, token: str | None) -> Fault | None:
        for f in self.faults:
            if f.matches(service, token):
                if f.count is not None:
                    f.count -= 1
                return f
        return None

    async def stalled(self, fault: Fault) -> None:
        """Return once ``fault`` is no longer a rule (DELETE /faults, POST /reset)."""
        import asyncio

        while any(f is fault for f in self.faults):
            await asyncio.sleep(0.05)

    def is_dead(self, token: str) -> bool:
        # "dead..." is hexadecimal too, so the same prefix works for APNs and FCM demo tokens
        return token in self.dead_tokens or token.startswith("dead")

    def record(self, entry: dict) -> None:
        entry.setdefault("time", time.time())
        self.requests.append(entry)
        line = json.dumps(entry, sort_keys=True)
        if self.log_file is not None:
            self.log_file.write(line + "\n")
            self.log_file.flush()
        if not self.quiet:
            tok = entry.get("token") or ""
            data = entry.get("data")
            print(f"[{entry['service']}{'/' + entry['host'] if entry.get('host') else ''}] {entry['status']} "
                  f"{entry.get('reason') or 'accepted'} token={tok[:8]}… "
                  f"data={json.dumps(data, sort_keys=True) if data else '-'}", file=sys.stdout, flush=True)

    def stats(self) -> dict:
        by_status: Counter = Counter()
        for r in self.requests:
            by_status[f"{r['service']}:{r['status']}"] += 1
        conns = dict(self.connections)
        conns.update({f"{what}-peers": len(p) for what, p in self.peers.items()})
        return {"connections": conns, "requests": dict(by_status),
                "oauth_tokens_issued": self.oauth_issued, "faults": [f.__dict__ for f in self.faults],
                "apns_refused_streams": dict(self.apns_refused), "fcm_quota_refused": dict(self.quota_refused)}

    def reset(self) -> None:
        self.requests.clear()
        self.connections.clear()
        self.faults.clear()
        self.dead_tokens.clear()
        self.oauth_issued = 0
        self.peers.clear()
        self.apns_max_streams = None
        self.apns_refused.clear()
        self.quota_used.clear()
        self.quota_refused.clear()
        self.offline.clear()
