"""Alerts stage: per-subject rules over states, signed webhooks, self-care suggestions.

``rules`` (what a rule is and how it is evaluated), ``db`` (the alerts' SQLite file and the
durable outbox), ``engine`` (evaluation off the ingest path, for subjects and cohorts),
``destinations`` (which webhook targets are allowed: no internal addresses unless
allow-listed), ``webhooks`` (signing and delivery with retries) and ``suggestion`` (paced
breathing when stress persists). The API wires
them in its lifespan; see ``docs/alerts.md``.

Example
-------
>>> from wearemo.alerts import RuleSpec
>>> RuleSpec(kind="no_data", url="https://example.org/hook").duration
1800.0
"""

from wearemo.alerts.db import AlertDB, AlertRecord, Attempt, Delivery, RuleRecord
from wearemo.alerts.destinations import (
    DestinationRefusedError,
    WebhookAllowList,
    check_destination,
    redact_url,
)
from wearemo.alerts.engine import AlertEngine
from wearemo.alerts.rules import RuleKind, RuleSpec
from wearemo.alerts.suggestion import Suggestion, suggest
from wearemo.alerts.webhooks import Dispatcher, RetryPolicy, signature_header, verify_signature

__all__ = [
    "AlertDB",
    "AlertEngine",
    "AlertRecord",
    "Attempt",
    "Delivery",
    "DestinationRefusedError",
    "Dispatcher",
    "RetryPolicy",
    "RuleKind",
    "RuleRecord",
    "RuleSpec",
    "Suggestion",
    "WebhookAllowList",
    "check_destination",
    "redact_url",
    "signature_header",
    "suggest",
    "verify_signature",
]
