"""Queue and task names, and the Celery configuration every process shares.

Producers (``pushsync.client``) and workers (``worker.app``) build their Celery apps from
``celery_config``, so what keeps messages from being lost, and where each message goes, is
said once, here, and a producer needs nothing of the worker's code.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from pushsync.broker import broker_url, transport_options
from pushsync.settings import Settings

EVENTS_QUEUE = "events"
FCM_QUEUE = "push.fcm"
APNS_QUEUE = "push.apns"
# The queues an operator names (`pushsync worker -Q ...`) and the metrics count.
QUEUES = (EVENTS_QUEUE, FCM_QUEUE, APNS_QUEUE)
# What Celery's consumer reads in place of ``events``: run triggers (tiny messages that carry
# nothing; a run takes its ingest messages from ``events`` itself, atomically: worker.intake) and
# the scheduler's periodic jobs. A worker told to consume ``events`` consumes this instead.
RUNS_QUEUE = "events.runs"

INGEST_TASK = "pushsync.ingest"  # what producers send to ``events``; only ingest runs read it
RUN_TASK = "pushsync.ingest_run"
DELIVER_TASK = "pushsync.deliver"


def queue_for(platform: str) -> str:
    return FCM_QUEUE if platform == "GCM" else APNS_QUEUE


def celery_config(settings: Settings) -> dict:
    """Time limits and the visibility timeout come from the settings (README "Not losing
    messages"): a task is killed after PUSHSYNC_TASK_TIME_LIMIT, and Redis hands an un-acked
    message to another worker after PUSHSYNC_VISIBILITY_TIMEOUT, which must be longer, so a
    healthy task is never re-delivered while it runs."""
    return dict(
        broker_url=broker_url(settings),
        # pickle from a queue is remote code execution: JSON only, both ways
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # a message is acknowledged only once its task has finished, and given back when the
        # process running it dies
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.soft_time_limit,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # kombu looks for abandoned (un-acked, past the visibility timeout) messages every
            # interval x throttle seconds, 100 s by default; every 5 s makes recovery after a
            # worker's death take the visibility timeout plus at most 5 s
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            # Sentinel: the master's name and the sentinels' timeouts (nothing for a redis:// URL)
            **transport_options(settings),
        },
        # each queue its own exchange and routing key: a bare Queue(name) here took the default
        # queue's exchange and key, which would route every delivery into "events"
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name)
                     for name in (*QUEUES, RUNS_QUEUE)],
        task_default_queue=RUNS_QUEUE,
        task_routes={INGEST_TASK: {"queue": EVENTS_QUEUE}, RUN_TASK: {"queue": RUNS_QUEUE}},
        task_create_missing_queues=False,
        # task events feed Flower (received, started, succeeded...); a "sent" event per enqueued
        # task would double the Redis publishes on the hot path, so producers send none
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )


def producer_app():
    """A Celery app that only sends: the project's configuration, none of its tasks."""
    from celery import Celery

    from pushsync.settings import get_settings

    app = Celery("pushsync")
    app.conf.update(celery_config(get_settings()))
    return app
