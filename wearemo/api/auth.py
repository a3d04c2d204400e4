"""Who is calling and what they may do: scopes, roles, the principal, the bootstrap admin key.

Scopes (each endpoint declares the ones it needs, see ``wearemo.api.deps``):

``subjects:read``
    read a granted subject's samples summary, states, baseline; list granted subjects.
``ingest:write``
    upload sample batches of granted subjects.
``baseline:write``
    set a granted subject's personal baseline from a calibration period.
``admin``
    manage keys, cohorts, pseudonymous subjects; read the audit log.

Roles carry fixed scopes: ``device`` has ``subjects:read``, ``ingest:write`` and
``baseline:write`` (on its granted subjects); ``reader`` has ``subjects:read`` (on the subjects
of its cohorts); ``admin`` has every scope on every subject.

A request is checked once. A connection that stays open (a live WebSocket, an SSE stream, the
ingest WebSocket) holds a :class:`PrincipalWatch` instead: :class:`Authenticator` re-validates
its principal against the key store on each message (a dictionary lookup while nothing
changed), and wakes every watch when keys or grants change, so a revocation, an expiry or a
withdrawn grant reaches open connections within moments. Re-validation dispatches on
``Principal.source``; a principal of another kind (a browser session later) plugs in there.

Example
-------
>>> Principal("k1", "reader", frozenset({"s01"})).may("ingest:write")
False
>>> Principal("k1", "reader", frozenset({"s01"})).reaches("s01")
True
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from starlette.concurrency import run_in_threadpool

from wearemo.api.keystore import KeyAccess, KeyStore, Role
from wearemo.settings import Settings, secret_weakness
from wearemo.store.private import private_dir

__all__ = [
    "ADMIN_KEY_FILE",
    "AUDIT_KEY_FILE",
    "BOOTSTRAP_KEY_ID",
    "ROLE_SCOPES",
    "SCOPES",
    "WS_CLOSE_FORBIDDEN",
    "WS_CLOSE_UNAUTHORIZED",
    "AccessEndedError",
    "Authenticator",
    "Principal",
    "PrincipalWatch",
    "Scope",
    "load_admin_key",
    "load_audit_key",
]

log = logging.getLogger(__name__)

Scope = Literal["subjects:read", "ingest:write", "baseline:write", "alerts:write", "admin"]

#: Every scope with what it allows (shown in the OpenAPI description).
SCOPES: dict[Scope, str] = {
    "subjects:read": "Read granted subjects: summary, states, baseline; list them.",
    "ingest:write": "Upload sample batches of granted subjects.",
    "baseline:write": "Set a granted subject's personal baseline.",
    "alerts:write": "Create, change and delete a granted subject's alert rules (webhooks).",
    "admin": "Manage keys, cohorts and pseudonymous subjects; read the audit log.",
}

ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    "device": frozenset({"subjects:read", "ingest:write", "baseline:write"}),
    # Clinicians and trial staff set alert rules; a device key never sets up data egress.
    "reader": frozenset({"subjects:read", "alerts:write"}),
    "admin": frozenset(SCOPES),
}

#: Key id under which the bootstrap admin key (``WEAREMO_ADMIN_KEY``) appears in the audit log.
BOOTSTRAP_KEY_ID = "bootstrap-admin"
#: Where the generated bootstrap admin key is written when ``WEAREMO_ADMIN_KEY`` is unset.
ADMIN_KEY_FILE = "admin.key"
#: Where the generated audit chain key is written when ``WEAREMO_AUDIT_KEY`` is unset.
AUDIT_KEY_FILE = "audit.key"

#: WebSocket close codes (private range 4000-4999, read as HTTP 401 / 403): the connection's
#: key was revoked, expired or deleted; its grant no longer covers the connection's subjects.
WS_CLOSE_UNAUTHORIZED = 4401
WS_CLOSE_FORBIDDEN = 4403

PrincipalSource = Literal["key", "bootstrap"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes
    ----------
    key_id
        The key's public id (``bootstrap-admin`` for ``WEAREMO_ADMIN_KEY``).
    role
        ``device``, ``reader`` or ``admin``.
    subjects
        The subjects the key reaches, or None for every subject (admin).
    expires_ns
        When the principal stops being valid by itself (unix ns), None never.
    source
        What it was authenticated from (``key``: an API key in the key store, ``bootstrap``:
        ``WEAREMO_ADMIN_KEY``); :meth:`Authenticator.revalidate` dispatches on it.
    """

    key_id: str
    role: Role
    subjects: frozenset[str] | None
    expires_ns: int | None = None
    source: PrincipalSource = "key"

    def may(self, scope: str) -> bool:
        """The role carries ``scope``."""
        return scope in ROLE_SCOPES[self.role]

    def reaches(self, subject_id: str) -> bool:
        """``subject_id`` is within the key's grant."""
        return self.subjects is None or subject_id in self.subjects


class AccessEndedError(Exception):
    """A principal is no longer valid (its key was revoked, expired or deleted); the message
    says which, for the close reason of the connection it held."""


class Authenticator:
    """Turns a presented key into a :class:`Principal`, and keeps open connections' principals
    current.

    Parameters
    ----------
    keys
        The key store; its changes (:meth:`KeyStore.on_change`) wake every watch.
    admin_key
        The bootstrap admin key (``WEAREMO_ADMIN_KEY``); only its SHA-256 is kept.

    Example
    -------
    >>> ks = KeyStore(":memory:")
    >>> auth = Authenticator(ks, "x" * 43)
    >>> p = auth.authenticate(ks.create_key("device", subjects=["s1"]).secret)
    >>> p.reaches("s1"), auth.authenticate("wrong") is None
    (True, True)
    >>> _ = ks.revoke(p.key_id)
    >>> try:
    ...     auth.revalidate(p)
    ... except AccessEndedError as exc:
    ...     str(exc).endswith("was revoked")
    True
    """

    def __init__(self, keys: KeyStore, admin_key: str) -> None:
        self._keys = keys
        self._admin_sha256 = hashlib.sha256(admin_key.encode()).digest()
        self._lock = threading.Lock()
        self._generation = 0
        self._watches: set[PrincipalWatch] = set()
        self._loading: dict[tuple[str, str], asyncio.Future[Principal]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # One re-validation per kind of principal; a browser session adds its own here.
        self._revalidators: dict[str, Callable[[Principal], Principal]] = {
            "key": self._revalidate_key,
            "bootstrap": lambda p: p,  # set at start from the environment: cannot change
        }
        self._unsubscribe = keys.on_change(lambda _: self.notify())

    @property
    def generation(self) -> int:
        """Counts the changes seen; a watch re-validates when it moved (no I/O)."""
        return self._generation

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake watches on ``loop`` (the server's event loop; call once at start)."""
        self._loop = loop

    def close(self) -> None:
        """Stop listening to the key store."""
        self._unsubscribe()

    def authenticate(self, key: str) -> Principal | None:
        """The principal ``key`` stands for, or None (malformed, unknown, wrong secret, expired,
        revoked). Reads the key store's change counter first (blocking: call it off the event
        loop), so a change by another process applies to this very request."""
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), self._admin_sha256):
            return Principal(BOOTSTRAP_KEY_ID, "admin", None, source="bootstrap")
        info = self._keys.verify(key)
        access = self._keys.access(info.key_id) if info is not None else None
        if info is None or access is None:
            return None
        return Principal(info.key_id, info.role, access.grant, expires_ns=info.expires_ns)

    def revalidate(self, principal: Principal) -> Principal:
        """``principal`` as the key store sees it now: with its current grant.

        Raises
        ------
        AccessEndedError
            The principal is no longer valid (revoked, expired, deleted).
        """
        return self._revalidators[principal.source](principal)

    def revalidate_nowait(self, principal: Principal) -> Principal | None:
        """:meth:`revalidate` when it can answer without I/O (the key is cached), else None.
        Never blocks: after a change, most connections re-check on the event loop and only
        the first of each key goes to a thread to read it."""
        if principal.source == "bootstrap":
            return principal
        if principal.source != "key":
            return None
        access = self._keys.peek(principal.key_id)
        return self._key_principal(principal, access) if access is not None else None

    async def revalidate_async(self, principal: Principal) -> Principal:
        """:meth:`revalidate` for the event loop: answered from the cache when it can, else
        read in a thread, once per key however many connections of it ask at the same time
        (after a change every connection wakes at once).

        Raises
        ------
        AccessEndedError
            The principal is no longer valid.
        """
        checked = self.revalidate_nowait(principal)
        if checked is not None:
            return checked
        who = (principal.source, principal.key_id)
        loading = self._loading.get(who)
        if loading is None:
            loading = asyncio.ensure_future(run_in_threadpool(self.revalidate, principal))
            self._loading[who] = loading
            loading.add_done_callback(lambda _: self._loading.pop(who, None))
        # asyncio.wait: a connection closing meanwhile does not cancel the read the others
        # wait for, and the shared outcome is not re-raised (its traceback would grow with
        # every waiter): each gets its own exception.
        await asyncio.wait([loading])
        error = loading.exception()
        if isinstance(error, AccessEndedError):
            raise AccessEndedError(str(error))
        if error is not None:
            raise RuntimeError(f"re-validating {principal.key_id} failed: {error}") from error
        return loading.result()

    def _revalidate_key(self, principal: Principal) -> Principal:
        return self._key_principal(principal, self._keys.access(principal.key_id))

    @staticmethod
    def _key_principal(principal: Principal, access: KeyAccess | None) -> Principal:
        if access is None:
            raise AccessEndedError(f"API key {principal.key_id} was deleted")
        info = access.info
        if info.revoked_ns is not None:
            raise AccessEndedError(f"API key {principal.key_id} was revoked")
        if not info.active():
            raise AccessEndedError(f"API key {principal.key_id} has expired")
        return Principal(info.key_id, info.role, access.grant, expires_ns=info.expires_ns)

    def refresh(self) -> None:
        """Look for changes made by another process (one read; blocking)."""
        self._keys.refresh()

    def notify(self) -> None:
        """Something that grants access changed: every watch re-validates (any thread)."""
        with self._lock:
            self._generation += 1
        loop = self._loop
        if loop is not None:
            # RuntimeError: the loop is closed, the server is shutting down.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for watch in list(self._watches):
            watch._changed.set()

    def watch(self, principal: Principal) -> PrincipalWatch:
        """Keep ``principal`` current for an open connection (event loop only); close the
        watch (or use it as a context manager) when the connection ends."""
        return PrincipalWatch(self, principal)

    async def watch_store(self, interval_s: float) -> None:
        """Every ``interval_s``, look for changes another process (the CLI) made to the key
        file; changes through this process are announced at once and need no polling."""
        while True:
            try:
                await run_in_threadpool(self._keys.refresh)
            except Exception:  # a busy or broken file must not end the watch
                log.exception("auth: could not read the key store's change counter")
            await asyncio.sleep(interval_s)


class PrincipalWatch:
    """One open connection's principal, kept current by its :class:`Authenticator`.

    :meth:`current` is cheap while nothing changed (no I/O, no thread hop) and re-validates
    otherwise; :meth:`changed` waits for a change notification or the key's expiry.

    Example
    -------
    >>> async def demo() -> tuple[bool, str]:
    ...     ks = KeyStore(":memory:")
    ...     auth = Authenticator(ks, "x" * 43)
    ...     auth.bind(asyncio.get_running_loop())
    ...     p = auth.authenticate(ks.create_key("reader").secret)
    ...     with auth.watch(p) as watch:
    ...         _ = ks.revoke(p.key_id)  # e.g. DELETE /v1/admin/keys/{key_id}
    ...         await watch.changed()
    ...         return await watch.current() is None, watch.ended_reason[-7:]
    >>> asyncio.run(demo())
    (True, 'revoked')
    """

    def __init__(self, auth: Authenticator, principal: Principal) -> None:
        self._auth = auth
        self._principal: Principal | None = principal
        self._checked = auth.generation
        self._changed = asyncio.Event()
        #: Why the principal ended (set once :meth:`current` returned None).
        self.ended_reason = ""
        auth._watches.add(self)

    async def current(self, *, fresh: bool = False) -> Principal | None:
        """The principal as valid now, or None once it no longer is (see ``ended_reason``).

        ``fresh`` first reads the key store's change counter (a change by another process
        then applies to this call, not only after the next poll).
        """
        principal = self._principal
        if principal is None:
            return None
        if fresh:
            await run_in_threadpool(self._auth.refresh)
        expired = principal.expires_ns is not None and time.time_ns() >= principal.expires_ns
        if self._checked == self._auth.generation and not expired:
            return principal
        generation = self._auth.generation  # before reading: a later change re-checks again
        try:
            principal = await self._auth.revalidate_async(principal)
        except AccessEndedError as exc:
            self._principal, self.ended_reason = None, str(exc)
            return None
        self._principal, self._checked = principal, generation
        return principal

    async def changed(self) -> None:
        """Return after the next change notification, or when the principal expires."""
        principal = self._principal
        timeout = None
        if principal is not None and principal.expires_ns is not None:
            timeout = max(0.0, (principal.expires_ns - time.time_ns()) / 1e9) + 0.01
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()

    def close(self) -> None:
        """Stop watching."""
        self._auth._watches.discard(self)

    def __enter__(self) -> PrincipalWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _secret_file(path: Path, what: str, *, create: bool) -> tuple[str | None, bool]:
    """A secret kept in a file of its own (mode 0600): read it, or generate it if missing and
    ``create``. Returns (secret or None, whether it was generated now)."""
    private_dir(path.parent)
    if not create and not path.exists():
        return None, False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ValueError(f"{path} is readable by other users (mode {mode:o}); "
                             f"`chmod 600 {path}`") from None
        key = path.read_text().strip()
        why = secret_weakness(key)
        if why is not None:
            raise ValueError(f"the {what} in {path} is refused: {why}") from None
        return key, False
    key = secrets.token_urlsafe(32)
    while secret_weakness(key) is not None:  # rare: a random token containing e.g. "admin"
        key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def load_audit_key(settings: Settings, *, create: bool = False) -> tuple[bytes | None, bool]:
    """The audit chain's HMAC key: ``WEAREMO_AUDIT_KEY``, else ``data_dir/audit.key``
    (mode 0600), generated when missing and ``create``. Never stored in the database.

    Returns (key or None when there is none and ``create`` is false, whether it was generated
    now).

    Raises
    ------
    ValueError
        The file holds a weak value, or is readable by other users.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     s = Settings(data_dir=d)
    ...     load_audit_key(s)[0] is None, load_audit_key(s, create=True)[1]
    (True, True)
    """
    if settings.audit_key is not None:  # checked by Settings already
        return settings.audit_key.get_secret_value().encode(), False
    path = Path(settings.data_dir) / AUDIT_KEY_FILE
    key, created = _secret_file(path, "audit key", create=create)
    if created:
        log.warning("WEAREMO_AUDIT_KEY is not set: generated the audit chain key into %s "
                    "(mode 0600); back it up apart from the database, `wearemo audit verify` "
                    "needs it", path)
    return (key.encode() if key is not None else None), created


def load_admin_key(settings: Settings) -> str:
    """The bootstrap admin key: ``WEAREMO_ADMIN_KEY``, else ``data_dir/admin.key``, which is
    generated (mode 0600) on first start. The secret itself is never logged.

    Raises
    ------
    ValueError
        ``data_dir/admin.key`` holds a weak value, or is readable by other users.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     key = load_admin_key(Settings(data_dir=d))
    ...     key == load_admin_key(Settings(data_dir=d))
    True
    """
    if settings.admin_key is not None:  # checked by Settings already
        return settings.admin_key.get_secret_value()
    path = private_dir(settings.data_dir) / ADMIN_KEY_FILE
    key, created = _secret_file(path, "admin key", create=True)
    assert key is not None  # create=True
    if created:
        log.warning("WEAREMO_ADMIN_KEY is not set: generated a bootstrap admin key into %s "
                    "(mode 0600); send it as `Authorization: Bearer <key>`", path)
    else:
        log.info("bootstrap admin key: read from %s", path)
    return key
