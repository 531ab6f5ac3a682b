"""The Celery app. Everything that keeps messages from being lost is set here, in one place."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from pushsync.settings import get_settings

EVENTS_QUEUE = "events"
FCM_QUEUE = "push.fcm"
APNS_QUEUE = "push.apns"
QUEUES = (EVENTS_QUEUE, FCM_QUEUE, APNS_QUEUE)

INGEST_TASK = "pushsync.ingest"
DELIVER_TASK = "pushsync.deliver"

# A task that runs longer than this is killed (and its message re-delivered): far above a
# healthy batch of 500 pushes, which takes well under a minute even against a slow APNs.
TASK_TIME_LIMIT = 300
# Redis re-delivers an un-acked message to another worker after this many seconds. It must be
# longer than any task may run (the hard time limit above), or a healthy task would be
# delivered twice while it is still running.
VISIBILITY_TIMEOUT = 2 * TASK_TIME_LIMIT


def queue_for(platform: str) -> str:
    return FCM_QUEUE if platform == "GCM" else APNS_QUEUE


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("pushsync", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
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
        task_time_limit=TASK_TIME_LIMIT,
        task_soft_time_limit=TASK_TIME_LIMIT - 30,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue=EVENTS_QUEUE,
        task_routes={INGEST_TASK: {"queue": EVENTS_QUEUE}},
        task_create_missing_queues=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


app = make_app()
