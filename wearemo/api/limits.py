"""Request body size limit (HTTP 413), checked on ``Content-Length`` and on the bytes read.

Example
-------
>>> from fastapi import FastAPI
>>> app = FastAPI()
>>> app.add_middleware(BodySizeLimit, max_bytes=1024)
"""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit"]

#: Bytes of an oversize body still read (and discarded) before answering, so the client is
#: not cut off mid-upload and actually sees the 413; beyond this the connection is dropped.
_DRAIN_BYTES = 64 * 1024 * 1024


class _BodyTooLargeError(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware answering HTTP 413 when a request body exceeds ``max_bytes``.

    Parameters
    ----------
    app
        The wrapped ASGI app.
    max_bytes
        Largest accepted body. Bodies announced larger (``Content-Length``) are refused before
        the app runs; streamed bodies are counted as they are read.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._drain(receive, declared)
            await self._reject(send, f"Content-Length {declared}")
            return
        received = 0
        too_large = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                return  # whatever the app answers to the aborted read, the answer is 413
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLargeError):
            await self.app(scope, limited_receive, guarded_send)
        if too_large and not response_started:
            await self._drain(receive, None)
            await self._reject(send, f"at least {received} bytes")

    async def _drain(self, receive: Receive, declared: int | None) -> None:
        if declared is not None and declared > _DRAIN_BYTES:
            return
        read = 0
        while read <= _DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _reject(self, send: Send, size: str) -> None:
        body = json.dumps(
            {
                "detail": f"request body too large ({size}); the limit is {self.max_bytes} "
                "bytes (max_request_bytes): split the upload into smaller requests"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
