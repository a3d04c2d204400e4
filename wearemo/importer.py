"""Load a trial's recording folders into a running wearemo server over its ingest API.

Each recording folder (E4 layout, :func:`wearemo.datasets.load_recording`) is cut into
10-second batches per channel (:meth:`~wearemo.datasets.Recording.iter_batches`) and posted to
``POST /v1/ingest`` as msgpack with ``float64`` values (``docs/ingest.md``), in time order.

Idempotent: a batch's id is ``imp-<digest>:<channel>:<first sample>``, where the digest covers
the folder's channel files and the batch length. Sending a batch again, in this run or another,
stores nothing twice (the server answers ``duplicate``); a folder whose files changed gets new
ids, and the server refuses data overlapping what it already holds (409), which is reported.

Resumable: after every acknowledged request the number of batches the server holds is written
to a progress file (JSON, replaced atomically), keyed by server, subject and digest. A re-run
skips them; batches of a request whose answer was lost are sent again and recognised as
duplicates. Without the file an import is still correct, only slower.

Waits when the server asks: 429 and 503 are retried after their ``Retry-After``, connection
errors and 502/504 with exponential backoff, up to ``max_wait_s`` for one request.

Refusals are per folder: a batch the server refuses for good (403 subject outside the key's
grant, 409 overlap, 422 e.g. sample times outside the server's accepted horizon, 413 for one
batch) ends that folder's upload with the server's reason; the next folder goes on. A refused
key (401) or a wrong URL (404) stops the import (:class:`ImportAbortedError`).

Example
-------
>>> with httpx.Client() as client:                                        # doctest: +SKIP
...     imp = Importer("http://127.0.0.1:8000", key, state=ImportState(Path("p.json")),
...                    client=client)
...     imp.import_folder(Path("trial/S02"), "p-0007").status
'imported'
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from wearemo.datasets import E4_FILES, load_recording
from wearemo.samples import SampleBatch, batches_to_msgpack

__all__ = [
    "IMPORT_CHUNK_S",
    "FolderResult",
    "ImportAbortedError",
    "ImportState",
    "Importer",
    "folder_digest",
]

#: Seconds of data per batch (part of the batch ids: changing it gives new ids).
IMPORT_CHUNK_S = 10.0

#: Statuses of one folder's import.
Status = Literal["imported", "already imported", "refused", "unreadable"]

# 429 and 503 carry Retry-After; 502 and 504 are a proxy in front of a restarting server.
_WAIT = frozenset({429, 502, 503, 504})
_TIME_FIELDS = ("start_ns", "timestamps_ns")


class ImportAbortedError(RuntimeError):
    """The import cannot go on for any folder (key refused, wrong URL, server unreachable)."""


def folder_digest(folder: Path, *, chunk_s: float = IMPORT_CHUNK_S) -> str:
    """SHA-256 of a recording folder's channel files (names and bytes) and the batch length.

    ``labels.csv`` and other files are left out: they are not uploaded, and editing them must
    not make the same samples look new.

    Example
    -------
    >>> from wearemo.batch import DEFAULT_EXCERPT
    >>> len(folder_digest(DEFAULT_EXCERPT))
    64
    """
    h = hashlib.sha256(f"wearemo-import chunk_s={chunk_s!r}\n".encode())
    stems = set(E4_FILES.values())
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.split(".")[0] in stems and f.name.endswith((".csv", ".csv.gz")):
            h.update(f"{f.name}\n{f.stat().st_size}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


class ImportState:
    """The progress file: per server, per subject and folder digest, how many of the folder's
    batches the server has acknowledged.

    Written after every acknowledged request by replacing the file with a complete new one
    (write, fsync, rename), so a killed import leaves the previous or the next state, never a
    torn one. ``path=None`` keeps the state in memory only.

    Example
    -------
    >>> s = ImportState(None)
    >>> s.acked("http://h", "s1", "ab12"), s.set("http://h", "s1", "ab12", 5, 9)
    (0, None)
    >>> s.acked("http://h", "s1", "ab12")
    5
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Any] = {"format": 1, "servers": {}}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: not a wearemo import progress file ({exc}); move it "
                                 "away or pass another --state") from None
            if not (isinstance(data, dict) and data.get("format") == 1
                    and isinstance(data.get("servers"), dict)):
                raise ValueError(f"{path}: not a wearemo import progress file (format 1)")
            self._data = data

    def _entry(self, api: str, subject: str, digest: str) -> dict[str, Any]:
        entry = self._data["servers"].get(api, {}).get(f"{subject}:{digest}")
        return entry if isinstance(entry, dict) else {}

    def acked(self, api: str, subject: str, digest: str) -> int:
        """Batches of this folder the server at ``api`` acknowledged in earlier runs."""
        n = self._entry(api, subject, digest).get("acked", 0)
        return n if isinstance(n, int) and n >= 0 else 0

    def set(self, api: str, subject: str, digest: str, acked: int, total: int, *,
            folder: Path | None = None, status: str = "", message: str = "") -> None:
        """Record progress and save the file."""
        self._data["servers"].setdefault(api, {})[f"{subject}:{digest}"] = {
            "acked": acked, "total": total, "folder": str(folder or ""), "status": status,
            "message": message, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.save()

    def save(self) -> None:
        """Write the file (complete, then renamed over the old one); OSError if it cannot."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump(self._data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


@dataclass(slots=True)
class FolderResult:
    """What happened to one folder.

    Attributes
    ----------
    folder, subject
        The recording folder and the subject id its data went to.
    status
        ``imported`` (every batch acknowledged), ``already imported`` (the progress file says
        so; nothing sent), ``refused`` (the server refused a batch: ``message``), or
        ``unreadable`` (the folder could not be loaded: ``message``).
    batches, acked, resumed_at
        The folder's batches, how many the server holds, and where this run started.
    stored, duplicates, samples
        This run's answers: batches newly stored, batches the server already had, and the
        samples acknowledged.
    message
        Why a folder was refused or unreadable (one line), or its loader warnings.
    """

    folder: Path
    subject: str
    status: Status
    batches: int = 0
    acked: int = 0
    resumed_at: int = 0
    stored: int = 0
    duplicates: int = 0
    samples: int = 0
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:  # the HTTP-date form
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _detail(response: httpx.Response) -> tuple[str, str]:
    """(field, reason) of an error answer: FastAPI issues, a 409 conflict, or plain text."""
    try:
        payload = response.json()
    except ValueError:
        return "", " ".join(response.text.split())[:300] or f"HTTP {response.status_code}"
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        issue = detail[0]
        where = issue.get("field") or ".".join(str(x) for x in (issue.get("loc") or [])[1:])
        return str(where), str(issue.get("msg", ""))
    if isinstance(detail, dict):
        return str(detail.get("field", "")), str(detail.get("message", detail))
    return "", str(detail)[:300]


class Importer:
    """Uploads recording folders to one server.

    Parameters
    ----------
    api_url
        Base URL of the wearemo API (``/v1/ingest`` is appended).
    api_key
        A key allowed to write the subjects (``device`` key granted them, or ``admin``).
    state
        Progress file (:class:`ImportState`).
    client
        The HTTP client (its connection pool is reused across requests).
    batches_per_request
        Batches per POST; halved when the server answers that a request is too large.
    device_id
        Device id put on the batches.
    max_wait_s
        Longest the server may keep one request waiting (Retry-After, outages) before the
        import stops with :class:`ImportAbortedError` (re-run to resume).
    on_progress
        ``on_progress(acked, total)`` after every acknowledged request of a folder.
    sleep
        How to wait (``time.sleep``).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        state: ImportState,
        client: httpx.Client,
        batches_per_request: int = 60,
        device_id: str = "e4",
        max_wait_s: float = 600.0,
        on_progress: Callable[[int, int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if batches_per_request < 1:
            raise ValueError(f"batches_per_request must be >= 1, got {batches_per_request}")
        self.api = api_url.rstrip("/")
        self.url = self.api + "/v1/ingest"
        self._headers = {"Authorization": f"Bearer {api_key}",
                         "Content-Type": "application/msgpack"}
        self.state = state
        self.client = client
        self.per_request = batches_per_request
        self.device_id = device_id
        self.max_wait_s = max_wait_s
        self.on_progress = on_progress
        self.sleep = sleep
        #: Requests retried after 429/503 (Retry-After), 502/504 or a connection error.
        self.retries = 0
        #: Seconds spent waiting for the server.
        self.waited_s = 0.0

    def import_folder(self, folder: Path, subject: str, *, resume: bool = True) -> FolderResult:
        """Upload one recording folder as ``subject``; see the module docstring.

        Raises
        ------
        ImportAbortedError
            The key was refused (401), the URL is not a wearemo API (404/405), or the server
            did not take a request for ``max_wait_s``.
        """
        try:
            digest = folder_digest(folder)
            rec = load_recording(folder, subject_id=subject)
            rec.device_id = self.device_id
            batches = list(rec.iter_batches(chunk_s=IMPORT_CHUNK_S,
                                            id_prefix=f"imp-{digest[:16]}"))
        except (ValueError, OSError) as exc:
            return FolderResult(folder, subject, "unreadable", message=" ".join(str(exc).split()))
        total = len(batches)
        start = min(self.state.acked(self.api, subject, digest), total) if resume else 0
        result = FolderResult(folder, subject, "imported", total, start, start,
                              warnings=list(rec.warnings))
        if start == total:
            result.status = "already imported"
            return result
        i = start
        while i < total:
            chunk = batches[i: i + self.per_request]
            response = self._post(chunk)
            status = response.status_code
            if 200 <= status < 300:
                self._count(result, chunk, response)
                i += len(chunk)
                result.acked = i
                self.state.set(self.api, subject, digest, i, total, folder=folder,
                               status="imported" if i == total else "partial")
                if self.on_progress is not None:
                    self.on_progress(i, total)
                continue
            where, why = _detail(response)
            if status == 401:
                raise ImportAbortedError(f"the server refused the API key (HTTP 401: {why})")
            if status in (404, 405):
                raise ImportAbortedError(f"{self.url} is not a wearemo ingest endpoint "
                                         f"(HTTP {status}); check --api")
            if (status == 413 or (status == 422 and where == "batches")) and len(chunk) > 1:
                self.per_request = max(1, len(chunk) // 2)  # the server's limit is lower
                continue
            if status == 409:
                # The batches before the refused one were stored (or duplicates).
                refused = self._refused_index(response, chunk)
                self._count_conflict(result, chunk[:refused], response)
                i += refused
                result.acked = i
            result.status = "refused"
            result.message = self._why_refused(status, where, why, subject)
            self.state.set(self.api, subject, digest, i, total, folder=folder,
                           status="refused", message=result.message)
            return result
        return result

    # -- internals -------------------------------------------------------------------------

    def _post(self, chunk: list[SampleBatch]) -> httpx.Response:
        """POST a request, waiting as the server asks; returns the first answer not to wait."""
        body = batches_to_msgpack(chunk)
        waited, attempt, errors = 0.0, 0, 0
        while True:
            reason: str
            delay: float | None
            try:
                response = self.client.post(self.url, content=body, headers=self._headers)
            except httpx.TransportError as exc:
                reason, delay = f"{type(exc).__name__}: {exc}", None
            else:
                status = response.status_code
                if status == 500 and errors < 2:  # a hiccup, or a bug that will repeat
                    errors += 1
                    reason, delay = "HTTP 500", None
                elif status in _WAIT:
                    reason, delay = f"HTTP {status}", _retry_after_s(response)
                else:
                    return response
            delay = min(30.0, 0.5 * 2**attempt) if delay is None else delay
            if waited + delay > self.max_wait_s:
                raise ImportAbortedError(
                    f"the server at {self.api} did not take a request for {waited:.0f} s "
                    f"({reason}); re-run the same command to resume")
            self.retries += 1
            self.sleep(delay)
            waited += delay
            self.waited_s += delay
            attempt += 1

    @staticmethod
    def _count(result: FolderResult, chunk: list[SampleBatch], response: httpx.Response) -> None:
        try:
            answers = {r["batch_id"]: r["status"] for r in response.json()["results"]}
        except (ValueError, KeyError, TypeError):
            answers = {}
        for b in chunk:
            if answers.get(b.batch_id) == "duplicate":
                result.duplicates += 1
            else:
                result.stored += 1
            result.samples += b.n_samples

    @staticmethod
    def _refused_index(response: httpx.Response, chunk: list[SampleBatch]) -> int:
        try:
            bad = response.json()["detail"]["batch_id"]
        except (ValueError, KeyError, TypeError):
            return 0
        ids = [b.batch_id for b in chunk]
        return ids.index(bad) if bad in ids else 0

    @staticmethod
    def _count_conflict(result: FolderResult, before: list[SampleBatch],
                        response: httpx.Response) -> None:
        try:
            dups = set(response.json()["detail"].get("duplicates_before") or [])
        except (ValueError, KeyError, TypeError, AttributeError):
            dups = set()
        for b in before:
            if b.batch_id in dups:
                result.duplicates += 1
            else:
                result.stored += 1
            result.samples += b.n_samples

    @staticmethod
    def _why_refused(status: int, where: str, why: str, subject: str) -> str:
        text = f"refused by the server (HTTP {status}{' ' + where if where else ''}: {why})"
        if status == 403:
            text += f"; the key may not write subject {subject!r}: grant it or use another key"
        elif status == 409:
            text += ("; the server already holds other data of this subject at these times (an "
                     "earlier import of a changed copy of this folder, or another folder mapped "
                     "to the same subject)")
        elif status == 422 and where.endswith(_TIME_FIELDS):
            text += ("; the server refuses sample times this far from its clock: a trial "
                     "import of past recordings needs the server's past-horizon setting "
                     "widened (docs/ingest.md)")
        return text
