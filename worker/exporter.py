"""`pushsync metrics`: the figures of ``worker.metrics.snapshot`` as Prometheus metrics, through
``prometheus_client``: a custom collector turns each scrape's snapshot (Redis, the store) into
metric families, the library writes the exposition format (text, or OpenMetrics when the scraper
asks for it) and serves it from a threaded WSGI server.

The names, labels and types are the ones the alert rules, the dashboard and the tests read:
counters are declared without their ``_total``, which the library adds back to the samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from worker.metrics import BUCKETS

# a scraper that opens a connection and sends nothing, or reads nothing, is let go after this;
# each connection has its own thread, so a slow one never holds up the others meanwhile
CONNECTION_TIMEOUT = 30.0
PATHS = ("/metrics", "/")


def _counter(name: str, text: str, labels: list[str], samples) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for values, n in samples:
        family.add_metric([str(v) for v in values], n)
    return family


def _gauge(name: str, text: str, samples, labels: list[str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=labels or [])
    for values, n in samples:
        family.add_metric([str(v) for v in values], n)
    return family


def _counters(snap: dict) -> Iterator[Metric]:
    yield _counter("pushsync_pushes_sent_total", "Pushes accepted by FCM or APNs.", ["platform"],
                   [((p,), n) for p, n in sorted(snap["sent"].items())])
    yield _counter("pushsync_pushes_failed_total", "Push attempts that failed, by platform and reason.",
                   ["platform", "reason"],
                   [((p, r), n) for p, rs in sorted(snap["failed"].items()) for r, n in sorted(rs.items())])
    yield _counter("pushsync_tokens_invalidated_total", "Devices deactivated because their token is dead.",
                   ["platform"], [((p,), n) for p, n in sorted(snap["invalidated"].items())])
    yield _counter("pushsync_events_total", "Change events by what became of them at ingest.", ["outcome"],
                   [((o,), n) for o, n in sorted(snap["events"].items())])
    yield _counter("pushsync_dead_lettered_total", "Items written to the dead-letter store, by kind.", ["kind"],
                   [((k,), n) for k, n in sorted(snap["dead_lettered"].items())])
    yield _counter("pushsync_pushes_skipped_total", "Pushes not sent at send time: the device is no longer "
                   "the batch identity's (not_owned), or a newer sync count was planned since (stale); and messages "
                   "an older pushsync sent to events, skipped (old_task).", ["why"],
                   [((k,), n) for k, n in sorted(snap.get("skipped", {}).items())])
    yield _counter("pushsync_pushes_held_total", "Pushes that waited in the retry set for a slot of their FCM "
                   "project's rate budget (fcm_budget) instead of going at once.", ["why"],
                   [((k,), n) for k, n in sorted(snap.get("held", {}).items())])


def _states(snap: dict) -> Iterator[Metric]:
    """The gauges of what is up: the store, the workers, the scheduler's lock, the pools' keys."""
    if "store" in snap:
        yield _gauge("pushsync_store_up", "1 if the store answered a query within a few seconds at this scrape, "
                     "else 0 (workers defer their events meanwhile; nothing is lost, nothing is pushed).",
                     [((), int(snap["store"]["up"]))])
    if "workers" in snap:
        yield _gauge("pushsync_workers_alive", "Workers whose heartbeat is recent (PUSHSYNC_HEALTH_STALL).",
                     [((), snap["workers"]["alive"])])
        yield _gauge("pushsync_workers_stuck", "Live workers whose queues hold messages but that finished "
                     "no task for PUSHSYNC_HEALTH_STALL seconds.", [((), snap["workers"]["stuck"])])
    if "scheduler_lock_held" in snap:
        yield _gauge("pushsync_scheduler_lock_held", "1 while a scheduler holds its Redis lock (it renews "
                     "it every few seconds), 0 when none does.", [((), snap["scheduler_lock_held"])])
    yield _gauge("pushsync_pools_key_unreadable", "Pools whose push credentials the worker cannot open (not with "
                 "its PUSHSYNC_SECRET_KEY, or a key file it cannot read), per worker; their events are "
                 "dead-lettered meanwhile. The worker's log names the pools.",
                 [((w,), n) for w, n in sorted(snap.get("pools_key_unreadable", {}).items())], ["worker"])


def _latency(snap: dict) -> HistogramMetricFamily:
    family = HistogramMetricFamily("pushsync_push_latency_seconds",
                                   "Time from event enqueued to push accepted by FCM or APNs.", labels=["platform"])
    for platform, h in sorted(snap["latency"].items()):
        cumulative, buckets = 0, []
        for bound in BUCKETS:
            cumulative += int(h.get(f"le={bound}", 0))
            buckets.append((str(bound), cumulative))
        buckets.append(("+Inf", cumulative + int(h.get("le=+Inf", 0))))
        family.add_metric([platform], buckets, sum_value=h.get("sum", 0.0))
    return family


def families(snap: dict) -> Iterator[Metric]:
    """Every metric family of one snapshot, in the page's order."""
    yield from _counters(snap)
    if snap.get("dead_letters") is not None:
        yield _gauge("pushsync_dead_letters", "Items in the dead-letter store now.", [((), snap["dead_letters"])])
    yield from _states(snap)
    yield _gauge("pushsync_queue_depth", "Messages waiting, per queue (retry: in the retry set).",
                 [((q,), n) for q, n in sorted(snap["queues"].items())], ["queue"])
    yield _latency(snap)


class SnapshotCollector:
    """A ``prometheus_client`` collector: one snapshot per scrape, taken when the page is asked for."""

    def __init__(self, take: Callable[[], dict]):
        self.take = take

    def collect(self) -> Iterator[Metric]:
        yield from families(self.take())


def registry(take: Callable[[], dict]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)  # registering takes no snapshot
    reg.register(SnapshotCollector(take))
    return reg


def prometheus(snap: dict) -> str:
    """The text exposition of one snapshot."""
    return generate_latest(registry(lambda: snap)).decode()


def app(reg: CollectorRegistry) -> Callable:
    """``prometheus_client``'s WSGI app on /metrics (and /); 404 elsewhere; 503 with one comment
    line when the snapshot cannot be taken (Redis out of reach), so Prometheus marks the target down."""
    inner = make_wsgi_app(reg)

    def metrics_app(environ, start_response):
        if environ.get("PATH_INFO", "/") not in PATHS:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]
        try:
            return inner(environ, start_response)  # it answers only once the page is made
        except Exception as exc:
            body = f"# pushsync metrics unavailable: {type(exc).__name__}: {exc}\n".encode()
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                                       ("Content-Length", str(len(body)))])
            return [body]

    return metrics_app


class _Handler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT

    def log_message(self, *args) -> None:  # no line per scrape
        pass


class _Server(ThreadingWSGIServer):
    def handle_error(self, request, client_address) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a scraper that timed out or hung up: its loss, nothing to report
            return
        super().handle_error(request, client_address)


def make(host: str, port: int, take: Callable[[], dict]) -> ThreadingWSGIServer:
    """The server, bound (port 0: any free one), not yet serving."""
    return make_server(host, port, app(registry(take)), _Server, handler_class=_Handler)


def serve(host: str, port: int, take: Callable[[], dict]) -> None:
    """`pushsync metrics`: serve until stopped."""
    server = make(host, port, take)
    print(f"serving metrics on http://{host}:{server.server_address[1]}/metrics", flush=True)
    server.serve_forever()
