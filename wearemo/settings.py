"""Service settings, read from the environment (prefix ``WEAREMO_``) or a ``.env`` file.

Example
-------
>>> s = Settings(data_dir="/tmp/wearemo-doc")
>>> s.resolved_sqlite_path().name
'wearemo.sqlite3'
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings", "secret_weakness"]

#: Values (and parts of values) that are published defaults or guesses, never secrets.
_KNOWN_DEFAULTS = ("changeme", "change-me", "change_me", "admin", "password", "secret", "default",
                   "letmein", "qwerty", "123456", "example", "wearemo")
#: Shortest accepted secret, characters.
MIN_SECRET_CHARS = 32
#: Least estimated entropy (character frequencies × length) of an accepted secret, bits.
MIN_SECRET_BITS = 80.0


def secret_weakness(value: str) -> str | None:
    """Why ``value`` is not an acceptable secret, or None when it is.

    Refused: fewer than 32 characters, a known default or guess anywhere in it ("changeme",
    "admin", "password", ...), a repeated pattern, or under ~80 bits of entropy estimated
    from its character frequencies (a random 32-character hex string has ~115, a
    ``secrets.token_urlsafe(32)`` ~200).

    Example
    -------
    >>> secret_weakness("changeme")
    'shorter than 32 characters'
    >>> import secrets
    >>> secret_weakness(secrets.token_urlsafe(32)) is None
    True
    """
    if len(value) < MIN_SECRET_CHARS:
        return f"shorter than {MIN_SECRET_CHARS} characters"
    lowered = value.lower()
    for word in _KNOWN_DEFAULTS:
        if word in lowered:
            return f"contains the well-known default {word!r}"
    if value in (value + value)[1:-1]:  # a shorter unit repeated
        return "a repeated pattern"
    counts = Counter(value)
    bits = -sum(n * math.log2(n / len(value)) for n in counts.values())
    if bits < MIN_SECRET_BITS:
        return f"low entropy (~{bits:.0f} bits estimated, at least {MIN_SECRET_BITS:.0f} needed)"
    return None


_LOOKS_NUMERIC = re.compile(r"[\d.]+(/.*)?|.*[:/].*")  # IPv4, anything with ":" or "/"
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
                        r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$", re.IGNORECASE)


def _allow_entry_problem(entry: str) -> str | None:
    """Why a webhook allow-list entry is neither a CIDR, an address nor a host name."""
    if "://" in entry:
        return "a CIDR, an address or a host name, not a URL"
    try:
        ipaddress.ip_network(entry.removeprefix("[").removesuffix("]"))
        return None
    except ValueError as exc:
        if _LOOKS_NUMERIC.fullmatch(entry):
            return str(exc)  # e.g. host bits set: 10.0.0.1/8
    return None if _HOST_NAME.match(entry) else "neither a CIDR, an address nor a host name"


class Settings(BaseSettings):
    """Configuration of the wearemo service.

    Every field can be set as ``WEAREMO_<FIELD>`` (e.g. ``WEAREMO_DATA_DIR=/var/lib/wearemo``).

    Attributes
    ----------
    data_dir
        Directory for the embedded store and other service state (created on start).
    retention_days
        Raw samples and derived data (windows, states, calibrations) older than this many days
        are deleted, in whichever store is used; ``None`` keeps everything.
    retention_interval_s
        How often the retention policy runs, seconds.
    store
        Backend of the :class:`~wearemo.store.StateStore`; ``"sqlite"`` is the zero set-up
        default. Left unset, setting ``influx_url`` alone selects ``"influx"``.
    sqlite_path
        SQLite database file; defaults to ``data_dir / "wearemo.sqlite3"``.
    model
        ``"default"`` (the stress model shipped in the package) or a path to a stress model
        artifact.
    affect_model, valence_model
        Optional paths to an affect model (``wearemo train --target affect`` or ``task``) and a
        valence model (``--target valence``) scored beside the stress model; without them the
        states say affect and valence are not estimated.
    window_s, step_s
        Feature window length and hop, seconds.
    min_coverage
        Fraction of a window each used channel must cover for the window to be scored.
    lateness_s
        How long a window waits for late channels before it is closed, seconds.
    max_request_bytes
        Largest accepted request body; larger uploads get HTTP 413.
    max_batches_per_request
        Largest number of ``SampleBatch``es in one ingest request (or WebSocket message).
    ingest_max_ahead_s
        Ingest refuses (HTTP 422, nothing of the request stored) a batch with a sample more
        than this many seconds ahead of the server clock; ``None`` (``null`` in the
        environment) turns the bound off. The
        default, 300 s, covers clock skew between devices and the server while limiting how
        long a wrong clock can lock out correct data (see
        :class:`~wearemo.ingest.TimeBounds`).
    ingest_max_age_days
        Ingest refuses (HTTP 422) a batch with a sample older than this many days before the
        server clock (a clock reset to 1970 or 2000); ``None`` turns the bound off. Default
        3650 days.
    body_timeout_s, body_min_bytes_per_s
        A request body must arrive within ``body_timeout_s`` plus one second per
        ``body_min_bytes_per_s`` bytes received; a slower client (e.g. one sending a byte at a
        time to hold connections open) gets HTTP 408 and the connection is closed.
    processing
        ``"inline"``: ``POST /v1/ingest`` answers after its batches went through features
        and model (the response counts windows and states). ``"background"``: it answers once
        they are durably stored, and ``processing_workers`` threads produce windows and states
        from the store's queue (several times the ingest throughput; states appear a moment
        later; see ``GET /v1/ingest/lag``).
    processing_workers
        Background processing threads.
    max_pending_samples
        Background mode: while more accepted samples than this wait for processing, ingest is
        refused with HTTP 503 and ``Retry-After`` (nothing of the refused request is stored).
    rate_limit_requests_per_s, rate_limit_request_burst
        Per client (remote address; API key once authentication is on): sustained ingest
        requests per second and the burst; 0 turns the limit off.
    rate_limit_samples_per_s, rate_limit_sample_burst
        Per client: sustained samples per second (acc triples count once) and the burst; 0
        turns the limit off. Over a limit: HTTP 429 with ``Retry-After``.
    live_queue_size
        States a live client (WebSocket or SSE) may leave unread before it is disconnected.
    live_send_timeout_s
        Longest a send to one live client may take before it is disconnected.
    host, port
        Where ``wearemo serve`` listens.
    influx_url
        Base URL of the InfluxDB server (e.g. ``http://localhost:8086``); see docs/influx.md.
    influx_write_mode
        ``"v2"``: writes through ``influxdb-client`` to ``/api/v2/write`` (InfluxDB 2.x, 3.x,
        Cloud, 1.8+) with ``influx_token``, ``influx_org`` and ``influx_bucket``; ``"v1"``:
        the same line protocol posted to ``/write`` (InfluxDB 1.x) into ``influx_database``
        with ``influx_username``/``influx_password``.
    influx_database
        InfluxQL database every read goes to (``/query``); in v2 mode it defaults to
        ``influx_bucket`` (the DBRP mapping InfluxDB 2.x creates for a bucket).
    influx_buffer_dir, influx_buffer_max_bytes
        Directory of the on-disk write buffer (default ``data_dir / "influx-buffer"``) and
        the size at which writes are refused with HTTP 503 and ``Retry-After``.
    alerts_path
        The alerts' SQLite file (rules, fired alerts, webhook outbox); defaults to
        ``data_dir / "alerts.sqlite3"``.
    alert_check_interval_s
        How often ``no_data`` rules are checked, seconds.
    webhook_timeout_s
        Deadline of one webhook attempt, seconds: resolving, connecting, sending and the whole
        answer together (a receiver trickling its answer byte by byte is cut off at it).
    webhook_allow
        Intranet receivers webhooks may reach (``WEAREMO_WEBHOOK_ALLOW``, comma-separated):
        CIDRs or single addresses (``10.0.0.0/8``, ``127.0.0.1``) and host names
        (``hooks.intranet.example``, which may then resolve to private addresses). Without
        an entry, webhooks go only to public unicast addresses; see ``docs/security.md``.
    webhook_max_response_bytes
        Most bytes of a receiver's answer body read; the connection is dropped after them.
    webhook_concurrency
        Webhook attempts in flight at once, all destinations together.
    webhook_concurrency_per_destination
        Attempts in flight at once to one destination (host), so slow receivers cannot take
        every slot.
    webhook_max_attempts
        Attempts per delivery (first try included) before it is marked failed.
    webhook_backoff_s, webhook_backoff_max_s
        First retry delay and its cap (doubling per attempt, with jitter), seconds.
    log_format, log_level
        ``json`` (one object per line, the service default) or ``plain`` (people: CLI, demo),
        and the level of wearemo's loggers.
    admin_key
        The bootstrap admin API key (``WEAREMO_ADMIN_KEY``). A weak or well-known value is
        refused at start; when unset, one is generated on first start into
        ``data_dir / "admin.key"`` (mode 0600).
    auth_path
        SQLite file of API keys, cohorts and the audit log; defaults to
        ``data_dir / "auth.sqlite3"`` (independent of the state store).
    auth_recheck_interval_s
        How often the API looks for key and grant changes made by another process (the CLI,
        or an edit of the key file), seconds; open connections of a key revoked that way end
        within about this long. Changes made through the API apply at once, without polling.
    audit_key
        The HMAC key of the audit log's chain (``WEAREMO_AUDIT_KEY``); weak values are
        refused. When unset, one is generated into ``data_dir / "audit.key"`` (mode 0600).
        Never stored in the database: without it, entries cannot be rewritten unnoticed.
    audit_refusal_interval_s, audit_refusal_buckets
        Refused requests (no or bad key, missing scope, subject outside the grant) are
        audited as one entry per (reason, key, client, route) and interval, plus one entry
        with the count of the rest; at most ``audit_refusal_buckets`` such kinds per interval,
        beyond which all share one entry.
    """

    # env_parse_none_str: `WEAREMO_INGEST_MAX_AHEAD_S=null` turns an optional bound off.
    model_config = SettingsConfigDict(
        env_prefix="WEAREMO_", env_file=".env", extra="ignore", frozen=True,
        env_parse_none_str="null",
    )

    data_dir: Path = Path("out/data")
    retention_days: float | None = Field(default=None, gt=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)
    store: Literal["sqlite", "influx"] = "sqlite"
    sqlite_path: Path | None = None
    model: str = "default"
    affect_model: str | None = None
    valence_model: str | None = None
    window_s: float = Field(default=60.0, gt=0)
    step_s: float = Field(default=5.0, gt=0)
    min_coverage: float = Field(default=0.8, ge=0.0, le=1.0)
    lateness_s: float = Field(default=30.0, ge=0)
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_batches_per_request: int = Field(default=1000, ge=1)
    ingest_max_ahead_s: float | None = Field(default=300.0, ge=0)
    ingest_max_age_days: float | None = Field(default=3650.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    body_min_bytes_per_s: float = Field(default=5000.0, gt=0)
    processing: Literal["inline", "background"] = "inline"
    processing_workers: int = Field(default=1, ge=1, le=64)
    max_pending_samples: int = Field(default=5_000_000, ge=1)
    rate_limit_requests_per_s: float = Field(default=50.0, ge=0)
    rate_limit_request_burst: float = Field(default=200.0, ge=0)
    rate_limit_samples_per_s: float = Field(default=200_000.0, ge=0)
    rate_limit_sample_burst: float = Field(default=2_000_000.0, ge=0)
    live_queue_size: int = Field(default=256, ge=1, le=100_000)
    live_send_timeout_s: float = Field(default=10.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    influx_url: str | None = None
    influx_token: SecretStr | None = None
    influx_org: str | None = None
    influx_bucket: str = "wearemo"
    influx_database: str | None = None
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    influx_write_mode: Literal["v2", "v1"] = "v2"
    influx_buffer_dir: Path | None = None
    influx_buffer_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    alerts_path: Path | None = None
    alert_check_interval_s: float = Field(default=60.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_allow: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)
    webhook_concurrency_per_destination: int = Field(default=2, ge=1, le=1024)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_s: float = Field(default=5.0, gt=0)
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    log_format: Literal["json", "plain"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _influx_url_selects_influx(cls, data: Any) -> Any:
        # A user who only points WEAREMO_INFLUX_URL at a server means the influx store.
        if isinstance(data, dict) and data.get("influx_url") and data.get("store") is None:
            return {**data, "store": "influx"}
        return data

    @field_validator("webhook_allow", mode="before")
    @classmethod
    def _split_allow(cls, value: Any) -> Any:
        # One environment variable, comma-separated: "10.0.0.0/8,hooks.intranet".
        if isinstance(value, str):
            return tuple(v for v in re.split(r"[,\s]+", value) if v)
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _check_allow(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            why = _allow_entry_problem(entry)
            if why is not None:
                raise ValueError(f"WEAREMO_WEBHOOK_ALLOW entry {entry!r}: {why}")
        return value

    @model_validator(mode="after")
    def _check_influx(self) -> Settings:
        if self.store == "influx" and not self.influx_url:
            raise ValueError("influx_url: WEAREMO_STORE=influx needs WEAREMO_INFLUX_URL")
        return self

    admin_key: SecretStr | None = None
    auth_path: Path | None = None
    auth_recheck_interval_s: float = Field(default=1.0, gt=0)
    audit_key: SecretStr | None = None
    audit_refusal_interval_s: float = Field(default=60.0, gt=0)
    audit_refusal_buckets: int = Field(default=100, ge=1, le=100_000)

    @field_validator("admin_key", "audit_key")
    @classmethod
    def _refuse_weak_secret(cls, value: SecretStr | None, info: ValidationInfo
                            ) -> SecretStr | None:
        if value is None:
            return None
        why = secret_weakness(value.get_secret_value())
        if why is not None:
            name = str(info.field_name)
            raise ValueError(
                f"WEAREMO_{name.upper()} is refused: {why}. Use a random value, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`, or leave it "
                f"unset to have one generated into data_dir/{name.removesuffix('_key')}.key"
            )
        return value

    @model_validator(mode="after")
    def _check_window(self) -> Settings:
        if self.step_s > self.window_s:
            raise ValueError(f"step_s ({self.step_s}) must not exceed window_s ({self.window_s})")
        return self

    def resolved_sqlite_path(self) -> Path:
        """The SQLite file actually used: ``sqlite_path`` or ``data_dir / "wearemo.sqlite3"``."""
        if self.sqlite_path is not None:
            return self.sqlite_path
        return self.data_dir / "wearemo.sqlite3"

    def resolved_influx_buffer_dir(self) -> Path:
        """The Influx write buffer: ``influx_buffer_dir`` or ``data_dir / "influx-buffer"``."""
        if self.influx_buffer_dir is not None:
            return self.influx_buffer_dir
        return self.data_dir / "influx-buffer"

    def resolved_alerts_path(self) -> Path:
        """The alerts' SQLite file: ``alerts_path`` or ``data_dir / "alerts.sqlite3"``."""
        if self.alerts_path is not None:
            return self.alerts_path
        return self.data_dir / "alerts.sqlite3"
    def resolved_auth_path(self) -> Path:
        """The key/audit SQLite file: ``auth_path`` or ``data_dir / "auth.sqlite3"``."""
        return self.auth_path if self.auth_path is not None else self.data_dir / "auth.sqlite3"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process.

    Example
    -------
    >>> get_settings().store
    'sqlite'
    """
    return Settings()
