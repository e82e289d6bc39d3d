"""What the service shows the network before a request reaches its routes, and what it logs.

`Surface` is the outermost layer of the app (pure ASGI: a few dict operations per request):

- a path's trailing slash is dropped (`POST /predict/` is `/predict`, never a redirect), and HEAD
  is answered as GET without the body (uvicorn sends no body for a HEAD);
- `auth.Guard` decides who may go on (401/403, JSON);
- at most `max_in_flight` requests are handled at once per process; past it, 429 with
  Retry-After, before anything is read (a slow client holds its place only until the body-read
  timeout answers it 408).

`LOG_CONFIG` is the logging of `python -m ml_assets.serving` (every worker process): one format,
every line through `online_store.scrubbed`, so no URI's credentials reach a log, whoever logs it
(uvicorn, MLflow, a traceback). `UVICORN` holds the server options the tests share.
"""

from __future__ import annotations

import json
import logging

from ml_assets.serving.auth import Guard
from ml_assets.serving.online_store import scrubbed

# uvicorn's options besides host, port and workers: no `server: uvicorn` header (which server and
# version is nobody's business).
UVICORN = {"server_header": False}
RETRY_AFTER_SECONDS = 1


def error_body(reason: str) -> bytes:
    """The body of every error the application answers (validation's RequestError has the same)."""
    return json.dumps({"error": reason, "problem_count": 0, "problems": []}).encode()


class Surface:
    def __init__(self, app, guard: Guard, max_in_flight: int):
        self.app = app
        self.guard = guard
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if (len(path) > 1 and path[-1] == "/") or scope["method"] == "HEAD":
            # A copy: uvicorn reads its own scope's method to leave out a HEAD's body.
            scope = {**scope, "path": path.rstrip("/") or "/"}
            if scope["method"] == "HEAD":
                scope["method"] = "GET"
        if self.guard.on:
            refused = self.guard.refusal(scope["path"], _header(scope, b"authorization"))
            if refused is not None:
                status, reason, challenge = refused
                await _answer(send, status, reason, [(b"www-authenticate", challenge.encode())])
                return
        if self.in_flight >= self.max_in_flight:
            reason = f"busy: {self.max_in_flight} requests in flight; retry after {RETRY_AFTER_SECONDS} s"
            await _answer(send, 429, reason, [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _header(scope, name: bytes) -> bytes | None:
    for key, val in scope["headers"]:
        if key == name:
            return val
    return None


async def _answer(send, status: int, reason: str, headers: list[tuple[bytes, bytes]]) -> None:
    """A refusal, before the body is read: the connection is closed after it (uvicorn would
    otherwise keep reading and dropping whatever body the client still sends, however slowly)."""
    body = error_body(reason)
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": start + headers})
    await send({"type": "http.response.body", "body": body})


class RedactingFormatter(logging.Formatter):
    """Every formatted line (message, arguments and traceback) with URIs' credentials redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return scrubbed(super().format(record))


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "redacting": {
            "()": "ml_assets.serving.surface.RedactingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        }
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "redacting", "stream": "ext://sys.stderr"}
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    # uvicorn's own loggers write through the root's handler: one format, one redaction.
    "loggers": {
        name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    },
}
