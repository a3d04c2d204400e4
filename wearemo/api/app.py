"""The FastAPI application: ``create_app()`` builds it, the lifespan builds its resources.

Run it with ``wearemo serve`` or ``uvicorn --factory wearemo.api.app:create_app`` (settings
from ``WEAREMO_*`` environment variables). OpenAPI docs are served at ``/docs`` (Swagger UI)
and ``/redoc``, with their assets from this server: they work offline.

Example
-------
>>> app = create_app(Settings(data_dir="/tmp/wearemo-doc"))
>>> sorted(p for p in app.openapi()["paths"] if p.startswith("/v1/ingest"))
['/v1/ingest', '/v1/ingest/lag']
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from wearemo.alerts import AlertDB, AlertEngine, Dispatcher, RetryPolicy, WebhookAllowList
from wearemo.api.audit import AuditLog, AuditMiddleware, open_audit_log
from wearemo.api.auth import Authenticator, load_admin_key
from wearemo.api.deps import AppState, Resources
from wearemo.api.errors import on_http_error, on_store_unavailable, on_validation_error
from wearemo.api.keystore import KeyStore
from wearemo.api.limits import BodyReadTimeout, BodySizeLimit, RateLimiter
from wearemo.api.live import LiveHub
from wearemo.api.observe import RequestObserver
from wearemo.api.routes import (
    admin,
    alerts,
    export,
    health,
    ingest,
    interop,
    live,
    ops,
    series,
    subjects,
)
from wearemo.features import WindowConfig
from wearemo.metrics import ALERTS_FIRED, WEBHOOK_DELIVERIES
from wearemo.model import load_model
from wearemo.pipeline import Pipeline
from wearemo.settings import Settings, get_settings
from wearemo.store import StateStore, StoreUnavailableError, open_store
from wearemo.store.lock import DataDirLock
from wearemo.store.private import private_dir
from wearemo.store.retention import apply_retention

__all__ = ["DOCS_ASSETS", "create_app"]

log = logging.getLogger(__name__)

#: Where the API docs' own scripts, styles and icon are served (no CDN).
DOCS_ASSETS = "/docs-assets"

def _version() -> str:
    try:
        return version("wearemo")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


async def _retention_loop(store: StateStore, cfg: Settings) -> None:
    """Apply the retention policy at start and every ``retention_interval_s``."""
    if cfg.retention_days is None:
        return
    while True:
        try:
            await run_in_threadpool(apply_retention, store, days=cfg.retention_days)
        except Exception:  # a store outage must not end the policy: try again next time
            log.exception("retention run failed; retrying in %.0f s", cfg.retention_interval_s)
        await asyncio.sleep(cfg.retention_interval_s)


async def _audit_flush_loop(audit: AuditLog, interval_s: float) -> None:
    """Write the counts of refused requests once their interval is over."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(audit.flush_refusals)
        except Exception:  # logged; the counts stay pending and are written next time
            log.exception("audit: could not write the refusal counts")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the wearemo HTTP API.

    Parameters
    ----------
    settings
        Service settings; read from the environment (``WEAREMO_*``) when ``None``.

    Returns
    -------
    FastAPI
        The app; its store, model and pipeline are created on startup and closed on shutdown.

    Example
    -------
    >>> import uvicorn                                                # doctest: +SKIP
    >>> uvicorn.run(create_app(Settings(data_dir="out/api")), port=8000)  # doctest: +SKIP
    """
    cfg = settings if settings is not None else get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        # Blocking set-up (model deserialisation, SQLite open) off the event loop.
        model = await run_in_threadpool(load_model, cfg.model)
        extra = []
        for setting, path, targets in (("affect_model", cfg.affect_model, ("affect", "task")),
                                       ("valence_model", cfg.valence_model, ("valence",))):
            if path:
                m = await run_in_threadpool(load_model, path)
                if m.target not in targets:
                    raise ValueError(f"WEAREMO_{setting.upper()}={path}: model {m.version} has "
                                     f"target {m.target!r}, expected one of {targets}")
                extra.append(m)
        private_dir(cfg.data_dir)  # 0700: health data and secrets live here
        # Held while serving: offline changes (`wearemo subjects erase`) refuse to run under it.
        dir_lock = await run_in_threadpool(DataDirLock(cfg.data_dir).acquire_shared)
        store = await run_in_threadpool(open_store, cfg)
        window = WindowConfig(
            length_s=cfg.window_s,
            step_s=cfg.step_s,
            min_coverage=cfg.min_coverage,
            lateness_s=cfg.lateness_s,
        )
        pipeline = Pipeline(store, model, config=window, extra=extra, mode=cfg.processing,
                            workers=cfg.processing_workers,
                            max_pending_samples=cfg.max_pending_samples)
        alert_db = await run_in_threadpool(AlertDB, cfg.resolved_alerts_path())
        # Cohorts live in the key file: the alert engine asks it who is in a cohort.
        keys = await run_in_threadpool(KeyStore, cfg.resolved_auth_path())
        allow = WebhookAllowList.parse(cfg.webhook_allow)
        dispatcher = Dispatcher(
            alert_db,
            policy=RetryPolicy(base_s=cfg.webhook_backoff_s, cap_s=cfg.webhook_backoff_max_s,
                               max_attempts=cfg.webhook_max_attempts),
            timeout_s=cfg.webhook_timeout_s,
            concurrency=cfg.webhook_concurrency,
            per_destination=cfg.webhook_concurrency_per_destination,
            max_response_bytes=cfg.webhook_max_response_bytes,
            allow=allow,
            on_outcome=lambda outcome: WEBHOOK_DELIVERIES.labels(outcome=outcome).inc(),
        )
        engine = AlertEngine(
            alert_db, store, check_interval_s=cfg.alert_check_interval_s,
            on_change=dispatcher.wake, on_fired=lambda kind: ALERTS_FIRED.labels(kind=kind).inc(),
            allow=allow, cohorts_of=keys.subject_cohorts, members_of=keys.cohort_subjects,
        )
        unsubscribe_alerts = pipeline.subscribe(engine.submit)
        hub = LiveHub(queue_size=cfg.live_queue_size)
        hub.bind(asyncio.get_running_loop())
        unsubscribe_live = pipeline.subscribe(hub.publish)
        engine.start()
        delivering = asyncio.create_task(dispatcher.run(), name="wearemo-webhooks")
        pruning = asyncio.create_task(_retention_loop(store, cfg), name="wearemo-retention")
        # Batches a crash left unprocessed are queued here (and processed in the background);
        # after the listeners subscribed, so their states reach alerts and live streams.
        await run_in_threadpool(pipeline.start)
        limiter = RateLimiter(
            requests_per_s=cfg.rate_limit_requests_per_s,
            request_burst=cfg.rate_limit_request_burst,
            samples_per_s=cfg.rate_limit_samples_per_s,
            sample_burst=cfg.rate_limit_sample_burst,
        )
        admin_key = await run_in_threadpool(load_admin_key, cfg)
        keys = await run_in_threadpool(KeyStore, cfg.resolved_auth_path())
        # Refuses to start on a wrong or lost audit key, or an older log needing migration.
        audit = await run_in_threadpool(open_audit_log, cfg)
        auth = Authenticator(keys, admin_key)
        auth.bind(asyncio.get_running_loop())
        # Changes through this process notify at once; this catches the CLI's.
        watching = asyncio.create_task(auth.watch_store(cfg.auth_recheck_interval_s),
                                       name="wearemo-key-changes")
        flushing = asyncio.create_task(_audit_flush_loop(audit, cfg.audit_refusal_interval_s),
                                       name="wearemo-audit-refusals")
        resources = Resources(
            settings=cfg, store=store, model=model, pipeline=pipeline, live=hub, keys=keys,
            audit=audit, auth=auth, limiter=limiter,
        )
        # Move everything built so far (the model above all) out of the garbage collector's
        # reach: otherwise each full collection walks it again, and ingest allocates enough
        # small lists (acc triples) to trigger many; this made decoding ~20x slower.
        gc.freeze()
        log.info("wearemo API ready: store=%s model=%s processing=%s keys=%s", cfg.store,
                 model.version, cfg.processing, cfg.resolved_auth_path())
        try:
            yield {"resources": resources, "alerts": engine}
        finally:
            await run_in_threadpool(pipeline.close)
            unsubscribe_live()
            unsubscribe_alerts()
            await run_in_threadpool(engine.stop)
            delivering.cancel()
            pruning.cancel()
            watching.cancel()
            flushing.cancel()
            for task in (pruning, delivering, watching, flushing):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            auth.close()
            alert_db.close()
            store.close()
            keys.close()
            audit.close()  # writes the pending refusal counts
            dir_lock.release()

    # /docs and /redoc with the Swagger UI and ReDoc files of the fastapi-offline package
    # served from here: FastAPI's defaults load them from a CDN, which leaves the pages blank
    # offline and on locked-down (e.g. hospital) networks. No validator badge either: it
    # would send the schema's URL to an outside service.
    app = FastAPIOffline(
        title="wearemo",
        version=_version(),
        summary="Wearable physiological streams to stress states.",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StoreUnavailableError, on_store_unavailable)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_request_bytes)
    app.add_middleware(BodyReadTimeout, timeout_s=cfg.body_timeout_s,
                       min_bytes_per_s=cfg.body_min_bytes_per_s)
    app.add_middleware(AuditMiddleware)  # sees the status the client gets
    app.add_middleware(RequestObserver)  # added last: outermost, sees every answer
    app.include_router(health.router)
    app.include_router(ops.router)
    app.include_router(ingest.router)
    app.include_router(subjects.router)
    app.include_router(series.router)
    app.include_router(export.router)
    app.include_router(live.router)
    app.include_router(interop.router)
    app.include_router(alerts.router)
    app.include_router(alerts.cohort_router)
    app.include_router(admin.router)
    ingest.document_bodies(app)
    return app
