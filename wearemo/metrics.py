"""Prometheus metrics of the service (``GET /metrics``), shared by every stage that counts.

Metrics live in ``prometheus_client``'s default registry (one per process, as Prometheus
expects). Labels are bounded: channels, outcomes, state labels, HTTP method, status code and
*route templates* (``/v1/subjects/{subject_id}/state``), never raw paths or subject ids.

Example
-------
>>> INGEST_BATCHES.labels(channel="eda", outcome="stored").inc()
>>> b"wearemo_ingest_batches_total" in render()[0]
True
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = [
    "ALERTS_FIRED",
    "ALERT_QUEUE_DEPTH",
    "INGEST_BATCHES",
    "INGEST_SAMPLES",
    "PIPELINE_BATCH_SECONDS",
    "REQUEST_SECONDS",
    "STATES",
    "STORE_WRITE_ERRORS",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_OUTBOX_DEPTH",
    "render",
]

INGEST_BATCHES = Counter(
    "wearemo_ingest_batches", "Sample batches ingested, by channel and outcome "
    "(stored, duplicate, rejected).", ["channel", "outcome"])
INGEST_SAMPLES = Counter(
    "wearemo_ingest_samples", "Samples in ingested batches, by channel and outcome.",
    ["channel", "outcome"])
PIPELINE_BATCH_SECONDS = Histogram(
    "wearemo_pipeline_batch_seconds", "Time to store a new batch and run it through features "
    "and model (windows and states stored), per batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
STATES = Counter("wearemo_states", "State estimates stored, by label.", ["label"])
STORE_WRITE_ERRORS = Counter(
    "wearemo_store_write_errors", "Failed writes to the state store, by operation.",
    ["operation"])
REQUEST_SECONDS = Histogram(
    "wearemo_http_request_duration_seconds", "HTTP request latency by method, route template "
    "and status code.", ["method", "route", "status"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
WEBHOOK_DELIVERIES = Counter(
    "wearemo_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retry, "
    "failed).", ["outcome"])
ALERTS_FIRED = Counter("wearemo_alerts_fired", "Alerts fired, by rule kind.", ["kind"])
WEBHOOK_OUTBOX_DEPTH = Gauge(
    "wearemo_webhook_outbox_depth", "Webhook deliveries waiting (pending or being retried).")
ALERT_QUEUE_DEPTH = Gauge(
    "wearemo_alert_queue_depth", "State batches waiting for alert rule evaluation.")


def render() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type.

    Example
    -------
    >>> render()[1].startswith("text/plain")
    True
    """
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
