"""The model the isolation property compares the service with: what the contract promises, written
from the contract alone (it shares no code with the service)."""

from __future__ import annotations


class Model:
    """What the service promises, from the contract alone."""

    def __init__(self, creds, answers):
        self.creds = creds  # pool -> set of "GCM"/"APNS"
        self.answers = answers
        self.devices: dict[tuple, dict] = {}  # (pool, platform, token) -> device
        self.by_id: dict[str, dict] = {}
        self.last: dict[tuple, int] = {}  # (pool, identity, dataset) -> last notified count
        self.pending: list[tuple] = []  # retries: (device id, identity, dataset, count)
        self.retried: set = set()
        self.pushed: set = set()

    def register(self, pool, identity, platform, token, dev_id):
        dev = self.devices.get((pool, platform, token))
        if dev is None:
            dev = {"id": dev_id, "pool": pool, "platform": platform, "token": token, "identity": identity,
                   "active": True, "subs": set()}
            self.devices[(pool, platform, token)] = dev
            self.by_id[dev_id] = dev
        elif dev["identity"] != identity:
            dev.update(identity=identity, active=True, subs=set())
        else:
            dev["active"] = True
        assert dev["id"] == dev_id, "a known token got a new device id"

    def unregister(self, dev_id):
        dev = self.by_id.pop(dev_id)
        del self.devices[(dev["pool"], dev["platform"], dev["token"])]

    def message(self, events):
        newest: dict[tuple, tuple] = {}
        for pool, identity, dataset, count, origin in events:
            key = (pool, identity, dataset)
            if key not in newest or count > newest[key][0]:
                newest[key] = (count, origin)
        for (pool, identity, dataset), (count, origin) in newest.items():
            if not self.creds[pool]:
                continue  # dead-lettered: the pool has no credentials
            if (pool, identity, dataset) in self.last and count <= self.last[(pool, identity, dataset)]:
                continue  # stale or a duplicate
            self.last[(pool, identity, dataset)] = count
            for dev in list(self.by_id.values()):
                if (dev["pool"] == pool and dev["identity"] == identity and dev["active"]
                        and dataset in dev["subs"] and dev["id"] != origin
                        and ("GCM" if dev["platform"] == "GCM" else "APNS") in self.creds[pool]):
                    self._send(dev, identity, dataset, count)

    def _send(self, dev, identity, dataset, count):
        answer = self.answers[dev["token"]]
        attempt = (dev["id"], identity, dataset, count)
        if answer == "ok" or (answer == "retry_once" and attempt in self.retried):
            self.pushed.add((dev["pool"], dev["platform"], dev["token"], identity, dataset, count))
        elif answer == "retry_once":
            self.retried.add(attempt)
            self.pending.append(attempt)
        elif answer == "invalid":
            dev["active"] = False

    def retries(self):
        pending, self.pending = self.pending, []
        for dev_id, identity, dataset, count in pending:
            dev = self.by_id.get(dev_id)
            if (dev is None or dev["identity"] != identity or not dev["active"] or dataset not in dev["subs"]
                    or count < self.last.get((dev["pool"], identity, dataset), -1)):
                continue  # no longer this identity's, or overtaken by a newer count
            self._send(dev, identity, dataset, count)
