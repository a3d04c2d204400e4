"""API keys, their grants, cohorts and pseudonymous subject ids, in a small SQLite file.

The file (``data_dir / "auth.sqlite3"``) is independent of the state store, so keys work the
same with any :class:`~wearemo.store.StateStore` backend; :class:`~wearemo.api.audit.AuditLog`
keeps its hash-chained table in the same file.

A key is ``wmo_<key_id>_<secret>``: ``key_id`` is 12 random hex digits (public: it names the
key in lists and the audit log), ``secret`` 256 random bits (``secrets.token_urlsafe(32)``).
Only the SHA-256 of the secret is stored; a presented key is checked by comparing digests in
constant time. A fast hash is enough: the secret has 256 bits of entropy, so there is nothing
for a slow password hash to protect against.

Every change to keys or grants, by this process, another one (the CLI) or a hand-edit of the
file, bumps a *generation* counter that SQLite triggers keep in the file itself.
:meth:`KeyStore.refresh` reads it (one row) and, when it moved, empties the cache of keys and
grants and calls the listeners registered with :meth:`KeyStore.on_change`: that is how open
connections learn that a key was revoked or a grant withdrawn. Changes made through this
``KeyStore`` notify at once; changes from elsewhere when ``refresh`` next runs.

Roles and grants:

``device``
    A companion app or bridge: writes, and reads, only the subjects granted to it.
``reader``
    A clinician or trial team: reads the subjects of the cohorts granted to it.
``admin``
    Manages keys, cohorts and subjects; reaches every subject.

Example
-------
>>> ks = KeyStore(":memory:")
>>> created = ks.create_key("device", subjects=["s01"])
>>> key = ks.verify(created.secret)
>>> key.role, sorted(ks.grant(key))
('device', ['s01'])
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from wearemo.samples import ID_PATTERN
from wearemo.store.sqlite import connect_wal, truncate_wal

__all__ = [
    "KEY_PREFIX",
    "CohortInfo",
    "CreatedKey",
    "KeyAccess",
    "KeyInfo",
    "KeyStore",
    "KeyStoreError",
    "Role",
    "UnknownError",
    "parse_key",
]

Role = Literal["device", "reader", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)

KEY_PREFIX = "wmo_"
_KEY = re.compile(r"^wmo_(?P<key_id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_\-]{43})$")
_ID = re.compile(ID_PATTERN)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    secret_sha256 BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER,
    revoked_ns INTEGER
);
CREATE TABLE IF NOT EXISTS key_subjects (
    key_id TEXT NOT NULL REFERENCES keys(key_id),
    subject_id TEXT NOT NULL,
    PRIMARY KEY (key_id, subject_id)
);
CREATE TABLE IF NOT EXISTS cohorts (
    name TEXT PRIMARY KEY,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cohort_subjects (
    cohort TEXT NOT NULL REFERENCES cohorts(name),
    subject_id TEXT NOT NULL,
    PRIMARY KEY (cohort, subject_id)
);
CREATE TABLE IF NOT EXISTS cohort_grants (
    cohort TEXT NOT NULL REFERENCES cohorts(name),
    key_id TEXT NOT NULL REFERENCES keys(key_id),
    PRIMARY KEY (cohort, key_id)
);
CREATE TABLE IF NOT EXISTS pseudonyms (
    subject_id TEXT PRIMARY KEY,
    minted_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS grant_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n INTEGER NOT NULL
);
INSERT OR IGNORE INTO grant_generation VALUES (1, 0);
"""

# Triggers, not Python, bump the generation: a change by another process or by hand (sqlite3
# on the file) counts too. A file written by an older release gets them when next opened.
_SCHEMA += "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_changed_{op.lower()} AFTER {op} ON {table} "
    "BEGIN UPDATE grant_generation SET n = n + 1; END;\n"
    for table in ("keys", "key_subjects", "cohort_subjects", "cohort_grants")
    for op in ("INSERT", "UPDATE", "DELETE")
)

#: Keys whose access is cached at most (the cache is emptied when it is full or on a change).
_CACHE_MAX = 10_000


class KeyStoreError(ValueError):
    """A request the key store refuses (bad id, wrong role for a grant, ...)."""


class UnknownError(KeyError):
    """A key or cohort that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A stored key, without its secret.

    ``subjects`` are the subjects granted directly (device keys); ``cohorts`` the cohorts
    granted (reader keys).
    """

    key_id: str
    role: Role
    name: str
    created_ns: int
    expires_ns: int | None
    revoked_ns: int | None
    subjects: tuple[str, ...] = ()
    cohorts: tuple[str, ...] = ()

    def active(self, now_ns: int | None = None) -> bool:
        """Neither revoked nor expired at ``now_ns`` (default: now)."""
        now = time.time_ns() if now_ns is None else now_ns
        return self.revoked_ns is None and (self.expires_ns is None or now < self.expires_ns)


@dataclass(frozen=True, slots=True)
class KeyAccess:
    """A stored key and the subjects it reaches now (``grant`` None: every subject)."""

    info: KeyInfo
    grant: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: ``secret`` is the whole key to send (shown once, never stored)."""

    info: KeyInfo
    secret: str


@dataclass(frozen=True, slots=True)
class CohortInfo:
    """A cohort, its subjects and the reader keys it is granted to."""

    name: str
    created_ns: int
    subjects: tuple[str, ...]
    keys: tuple[str, ...]


def parse_key(key: str) -> tuple[str, str] | None:
    """``wmo_<key_id>_<secret>`` → ``(key_id, secret)``, or None when it has not that form.

    Example
    -------
    >>> parse_key("wmo_0123456789ab_" + "A" * 43)[0]
    '0123456789ab'
    >>> parse_key("Bearer nonsense") is None
    True
    """
    m = _KEY.match(key)
    return (m["key_id"], m["secret"]) if m else None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _check_ids(kind: str, ids: Iterable[str]) -> list[str]:
    out = []
    for i in ids:
        if not isinstance(i, str) or not _ID.match(i):
            raise KeyStoreError(f"{kind} {i!r} is not a valid id (letters, digits, '._:-'; "
                                "at most 128 characters)")
        out.append(i)
    return out


class KeyStore:
    """API keys, grants, cohorts and minted pseudonyms in one SQLite file.

    Parameters
    ----------
    path
        The SQLite file (created with its tables if missing), or ``":memory:"``.

    Notes
    -----
    One connection shared by all threads behind a lock, WAL mode: a CLI on the same file
    (``wearemo keys create``) and a running API see each other's changes at once, so a
    revocation takes effect on the next request (:meth:`verify` refreshes first).
    :meth:`access` answers from a cache, valid until the generation moves.

    Example
    -------
    >>> ks = KeyStore(":memory:")
    >>> reader = ks.create_key("reader", name="trial-1").info
    >>> _ = ks.create_cohort("trial-1", subjects=["s01", "s02"])
    >>> ks.grant_cohort("trial-1", reader.key_id)
    >>> sorted(ks.grant(ks.key(reader.key_id)))
    ['s01', 's02']
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._db = connect_wal(path, foreign_keys=True)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[bytes, KeyAccess]] = {}
        self._listeners: list[Callable[[int], None]] = []
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._generation = self._read_generation()

    # -- changes ---------------------------------------------------------------------------

    def _read_generation(self) -> int:
        row = self._db.execute("SELECT n FROM grant_generation WHERE id = 1").fetchone()
        return int(row[0])

    @property
    def generation(self) -> int:
        """The change counter as last read (no database access)."""
        return self._generation

    def on_change(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """Call ``listener(generation)`` after every change seen; returns the unsubscribe.

        Listeners run on the thread that saw the change (the one that made it, or the one
        calling :meth:`refresh`), outside the store's lock; they must only hand off.

        Example
        -------
        >>> ks = KeyStore(":memory:")
        >>> seen = []
        >>> stop = ks.on_change(seen.append)
        >>> _ = ks.create_cohort("c1", subjects=["s1"])
        >>> len(seen)
        1
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def refresh(self) -> bool:
        """Read the change counter; if keys or grants changed since, empty the cache and tell
        the listeners. True when something changed. One single-row read.

        Example
        -------
        >>> KeyStore(":memory:").refresh()
        False
        """
        with self._lock:
            generation = self._read_generation()
            if generation == self._generation:
                return False
            self._generation = generation
            self._cache.clear()
            listeners = list(self._listeners)
        for listener in listeners:
            listener(generation)
        return True

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys ------------------------------------------------------------------------------

    def create_key(
        self,
        role: Role,
        *,
        subjects: Sequence[str] = (),
        name: str = "",
        expires_ns: int | None = None,
    ) -> CreatedKey:
        """Create a key; the returned ``secret`` is the only copy of it.

        Parameters
        ----------
        role
            ``device``, ``reader`` or ``admin``.
        subjects
            Subjects granted to a device key (refused for other roles: readers get cohorts,
            admins reach everything).
        name
            A label for people (e.g. the bridge's host or the clinician's team).
        expires_ns
            Unix time (ns) after which the key is refused; None never expires.

        Example
        -------
        >>> KeyStore(":memory:").create_key("device", subjects=["s01"]).secret[:4]
        'wmo_'
        """
        if role not in ROLES:
            raise KeyStoreError(f"role must be one of {list(ROLES)}, got {role!r}")
        subs = _check_ids("subject", subjects)
        if subs and role != "device":
            raise KeyStoreError(f"subjects are granted to device keys; a {role} key "
                                + ("reads the subjects of its cohorts" if role == "reader"
                                   else "reaches every subject"))
        now = time.time_ns()
        if expires_ns is not None and expires_ns <= now:
            raise KeyStoreError("expires_ns is not in the future")
        secret = secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                while True:  # 48-bit ids: a collision is unlikely but cheap to rule out
                    key_id = secrets.token_hex(6)
                    if self._db.execute("SELECT 1 FROM keys WHERE key_id=?",
                                        (key_id,)).fetchone() is None:
                        break
                self._db.execute(
                    "INSERT INTO keys (key_id, role, name, secret_sha256, created_ns, expires_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, role, name, _digest(secret), now, expires_ns))
                self._db.executemany("INSERT OR IGNORE INTO key_subjects VALUES (?, ?)",
                                     [(key_id, s) for s in subs])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.refresh()
        info = KeyInfo(key_id, role, name, now, expires_ns, None, tuple(sorted(set(subs))))
        return CreatedKey(info, f"{KEY_PREFIX}{key_id}_{secret}")

    def verify(self, key: str, *, now_ns: int | None = None) -> KeyInfo | None:
        """The active key ``key`` names, or None (malformed, unknown, wrong secret, revoked,
        expired). The caller cannot tell which: all mean "bad key".

        Example
        -------
        >>> KeyStore(":memory:").verify("wmo_0123456789ab_" + "A" * 43) is None
        True
        """
        parsed = parse_key(key)
        if parsed is None:
            return None
        key_id, secret = parsed
        self.refresh()  # a revocation by another process applies to this very request
        cached = self._cached(key_id)
        # Compare digests in constant time; an unknown id still costs a comparison.
        stored = cached[0] if cached is not None else b"\0" * 32
        if not hmac.compare_digest(stored, _digest(secret)) or cached is None:
            return None
        info = cached[1].info
        return info if info.active(now_ns) else None

    def access(self, key_id: str) -> KeyAccess | None:
        """The key ``key_id`` with its current grant, or None if no such key is stored.

        Served from a cache that :meth:`refresh` empties when keys or grants change, so
        re-checking an open connection's key on each message costs a dictionary lookup.
        Revoked and expired keys are returned too (see :meth:`KeyInfo.active`).

        Example
        -------
        >>> ks = KeyStore(":memory:")
        >>> k = ks.create_key("device", subjects=["s01"]).info
        >>> sorted(ks.access(k.key_id).grant), ks.access("0123456789ab") is None
        (['s01'], True)
        """
        cached = self._cached(key_id)
        return cached[1] if cached is not None else None

    def peek(self, key_id: str) -> KeyAccess | None:
        """:meth:`access` if it is cached and the store is not busy, else None (then ask
        :meth:`access`). Never blocks: safe on an event loop.

        Example
        -------
        >>> ks = KeyStore(":memory:")
        >>> k = ks.create_key("device", subjects=["s01"]).info
        >>> ks.peek(k.key_id) is None, ks.access(k.key_id) == ks.peek(k.key_id)
        (True, True)
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            hit = self._cache.get(key_id)
        finally:
            self._lock.release()
        return hit[1] if hit is not None else None

    def _cached(self, key_id: str) -> tuple[bytes, KeyAccess] | None:
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is not None:
                return hit
            # One read transaction: the key, its grant and the generation they belong to.
            self._db.execute("BEGIN")
            try:
                generation = self._read_generation()
                row = self._db.execute("SELECT secret_sha256 FROM keys WHERE key_id=?",
                                       (key_id,)).fetchone()
                if row is None:
                    return None  # not cached: made-up ids cannot fill the cache
                info = self._read_key(key_id)
                entry = (bytes(row[0]), KeyAccess(info, self._read_grant(info)))
            finally:
                self._db.execute("COMMIT")
            if generation == self._generation:  # else a change is pending: do not keep it
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[key_id] = entry
            return entry

    def key(self, key_id: str) -> KeyInfo:
        """The stored key ``key_id`` (UnknownError if none)."""
        with self._lock:
            return self._read_key(key_id)

    def _read_key(self, key_id: str) -> KeyInfo:
        row = self._db.execute(
            "SELECT key_id, role, name, created_ns, expires_ns, revoked_ns FROM keys "
            "WHERE key_id=?", (key_id,)).fetchone()
        if row is None:
            raise UnknownError(f"unknown key {key_id!r}")
        subs = self._db.execute("SELECT subject_id FROM key_subjects WHERE key_id=? "
                                "ORDER BY subject_id", (key_id,)).fetchall()
        cohorts = self._db.execute("SELECT cohort FROM cohort_grants WHERE key_id=? "
                                   "ORDER BY cohort", (key_id,)).fetchall()
        kid, role, name, created, expires, revoked = row
        return KeyInfo(kid, role, name, created, expires, revoked,
                       subjects=tuple(s for (s,) in subs), cohorts=tuple(c for (c,) in cohorts))

    def list_keys(self) -> list[KeyInfo]:
        """Every key (active, expired and revoked), oldest first."""
        with self._lock:
            ids = [k for (k,) in self._db.execute(
                "SELECT key_id FROM keys ORDER BY created_ns, key_id").fetchall()]
        return [self.key(k) for k in ids]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key for good (idempotent; the first revocation time is kept)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE keys SET revoked_ns = COALESCE(revoked_ns, ?) WHERE key_id=?",
                (time.time_ns(), key_id))
        self.refresh()
        if cur.rowcount == 0:
            raise UnknownError(f"unknown key {key_id!r}")
        return self.key(key_id)

    def grant(self, key: KeyInfo) -> frozenset[str] | None:
        """The subjects ``key`` may reach now; None means every subject (admin).

        Read from the file on each call, so cohort changes apply to the next request.
        """
        with self._lock:
            return self._read_grant(key)

    def _read_grant(self, key: KeyInfo) -> frozenset[str] | None:
        if key.role == "admin":
            return None
        if key.role == "device":
            rows = self._db.execute("SELECT subject_id FROM key_subjects WHERE key_id=?",
                                    (key.key_id,)).fetchall()
        else:
            rows = self._db.execute(
                "SELECT DISTINCT cs.subject_id FROM cohort_grants g JOIN cohort_subjects cs"
                " ON cs.cohort = g.cohort WHERE g.key_id=?", (key.key_id,)).fetchall()
        return frozenset(s for (s,) in rows)

    # -- cohorts ---------------------------------------------------------------------------

    def create_cohort(self, name: str, *, subjects: Sequence[str] = ()) -> CohortInfo:
        """Create a cohort (KeyStoreError if the name is taken or invalid)."""
        _check_ids("cohort", [name])
        subs = _check_ids("subject", subjects)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO cohorts VALUES (?, ?)", (name, time.time_ns()))
                self._db.executemany("INSERT OR IGNORE INTO cohort_subjects VALUES (?, ?)",
                                     [(name, s) for s in subs])
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise KeyStoreError(f"cohort {name!r} already exists") from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.refresh()
        return self.cohort(name)

    def cohort(self, name: str) -> CohortInfo:
        """The cohort ``name`` (UnknownError if none)."""
        with self._lock:
            row = self._db.execute("SELECT name, created_ns FROM cohorts WHERE name=?",
                                   (name,)).fetchone()
            if row is None:
                raise UnknownError(f"unknown cohort {name!r}")
            subs = self._db.execute("SELECT subject_id FROM cohort_subjects WHERE cohort=? "
                                    "ORDER BY subject_id", (name,)).fetchall()
            keys = self._db.execute("SELECT key_id FROM cohort_grants WHERE cohort=? "
                                    "ORDER BY key_id", (name,)).fetchall()
        return CohortInfo(row[0], row[1], tuple(s for (s,) in subs), tuple(k for (k,) in keys))

    def list_cohorts(self) -> list[CohortInfo]:
        """Every cohort, by name."""
        with self._lock:
            names = [n for (n,) in self._db.execute("SELECT name FROM cohorts ORDER BY name")]
        return [self.cohort(n) for n in names]

    def add_subjects(self, cohort: str, subjects: Sequence[str]) -> CohortInfo:
        """Add subjects to a cohort (already present ones are kept once)."""
        subs = _check_ids("subject", subjects)
        self.cohort(cohort)
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO cohort_subjects VALUES (?, ?)",
                                 [(cohort, s) for s in subs])
        self.refresh()
        return self.cohort(cohort)

    def remove_subject(self, cohort: str, subject_id: str) -> CohortInfo:
        """Remove a subject from a cohort (UnknownError if it is not in it)."""
        self.cohort(cohort)
        with self._lock:
            cur = self._db.execute("DELETE FROM cohort_subjects WHERE cohort=? AND subject_id=?",
                                   (cohort, subject_id))
        self.refresh()
        if cur.rowcount == 0:
            raise UnknownError(f"subject {subject_id!r} is not in cohort {cohort!r}")
        return self.cohort(cohort)

    def grant_cohort(self, cohort: str, key_id: str) -> None:
        """Let reader key ``key_id`` read the subjects of ``cohort`` (idempotent)."""
        self.cohort(cohort)
        key = self.key(key_id)
        if key.role != "reader":
            raise KeyStoreError(f"cohorts are granted to reader keys; key {key_id!r} is a "
                                f"{key.role} key")
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO cohort_grants VALUES (?, ?)",
                             (cohort, key_id))
        self.refresh()

    def ungrant_cohort(self, cohort: str, key_id: str) -> None:
        """Withdraw a cohort from a reader key (UnknownError if it was not granted)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM cohort_grants WHERE cohort=? AND key_id=?",
                                   (cohort, key_id))
        self.refresh()
        if cur.rowcount == 0:
            raise UnknownError(f"cohort {cohort!r} is not granted to key {key_id!r}")

    def forget_subject(self, subject_id: str) -> int:
        """Remove a subject from every cohort and every key's grant (erasure); rows removed.

        The pseudonym stays recorded as minted, so it is never handed out again.

        Example
        -------
        >>> ks = KeyStore(":memory:")
        >>> ks.forget_subject("s1")
        0
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute("DELETE FROM cohort_subjects WHERE subject_id=?",
                                     (subject_id,)).rowcount
                n += self._db.execute("DELETE FROM key_subjects WHERE subject_id=?",
                                      (subject_id,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.refresh()
        return n

    def truncate_wal(self) -> bool:
        """Empty the write-ahead log, so forgotten grants leave no copy on disk
        (:func:`~wearemo.store.sqlite.truncate_wal`).

        Example
        -------
        >>> KeyStore(":memory:").truncate_wal()
        True
        """
        return truncate_wal(self._db, lock=self._lock)

    # -- pseudonyms ------------------------------------------------------------------------

    def mint_subjects(self, count: int, *, prefix: str = "p") -> list[str]:
        """Mint ``count`` new pseudonymous subject ids, e.g. ``p-4kq7x2m9d3vb8fzt``.

        Each id is 80 random bits (16 base-32 characters): it is derived from nothing, so it
        cannot be linked to a person or to another id; who it stands for is kept outside
        wearemo. Minted ids are recorded so they are never handed out twice.

        Example
        -------
        >>> [len(s) for s in KeyStore(":memory:").mint_subjects(2)]
        [18, 18]
        """
        if not 1 <= count <= 10_000:
            raise KeyStoreError(f"count must be between 1 and 10000, got {count}")
        _check_ids("prefix", [prefix])
        alphabet = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base 32: no i, l, o, u
        out: list[str] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                while len(out) < count:
                    sid = prefix + "-" + "".join(secrets.choice(alphabet) for _ in range(16))
                    cur = self._db.execute("INSERT OR IGNORE INTO pseudonyms VALUES (?, ?)",
                                           (sid, time.time_ns()))
                    if cur.rowcount:
                        out.append(sid)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out
