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

Example
-------
>>> Principal("k1", "reader", frozenset({"s01"})).may("ingest:write")
False
>>> Principal("k1", "reader", frozenset({"s01"})).reaches("s01")
True
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Literal

from wearemo.api.keystore import Role
from wearemo.settings import Settings, secret_weakness
from wearemo.store.private import private_dir

__all__ = [
    "ADMIN_KEY_FILE",
    "BOOTSTRAP_KEY_ID",
    "ROLE_SCOPES",
    "SCOPES",
    "Principal",
    "Scope",
    "load_admin_key",
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
    """

    key_id: str
    role: Role
    subjects: frozenset[str] | None

    def may(self, scope: str) -> bool:
        """The role carries ``scope``."""
        return scope in ROLE_SCOPES[self.role]

    def reaches(self, subject_id: str) -> bool:
        """``subject_id`` is within the key's grant."""
        return self.subjects is None or subject_id in self.subjects


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
            raise ValueError(f"the admin key in {path} is refused: {why}") from None
        log.info("bootstrap admin key: read from %s", path)
        return key
    key = secrets.token_urlsafe(32)
    while secret_weakness(key) is not None:  # rare: a random token containing e.g. "admin"
        key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.warning("WEAREMO_ADMIN_KEY is not set: generated a bootstrap admin key into %s "
                "(mode 0600); send it as `Authorization: Bearer <key>`", path)
    return key
