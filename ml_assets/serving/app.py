"""The HTTP face of the service (FastAPI): POST /predict, GET /health (readiness), GET
/health/details, GET /model.

Thin on purpose: the body is read here (with a size limit and a time limit), judged by
`validation`, scored by `Service`. Who may call which path, HEAD, trailing slashes and the cap on
requests in flight are `surface.Surface`, in front of the routes. Every answer the application
gives is JSON, errors as `ErrorResponse`. Card history and decisions live in the online store, so
any number of processes may serve (`python -m ml_assets.serving --workers N` runs N of them on one
port: `app_from_env` is what each builds).
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from ml_assets.serving.auth import OPERATIONS, SCORING, Guard
from ml_assets.serving.online_store import address, redacted, scrubbed
from ml_assets.serving.service import Service
from ml_assets.serving.surface import Surface, error_body
from ml_assets.serving.validation import RequestError, request_body_schema, validate

log = logging.getLogger(__name__)


class Prediction(BaseModel):
    transaction_id: str
    score: float
    # score >= the version's decision_threshold tag; null while the version has no threshold.
    decision: Literal["review", "approve"] | None
    model_version: str
    alias: str
    arm: str
    request_id: str  # the request that decided it (an earlier one's, for a retried transaction)
    stale_risk: bool  # merchant risk came from an earlier day's table (the day's was not written yet)


class PredictResponse(BaseModel):
    request_id: str
    model_name: str
    strategy: str
    predictions: list[Prediction]


class Problem(BaseModel):
    row: int | None
    field: str | None
    reason: str


class ErrorResponse(BaseModel):
    error: str
    problem_count: int
    problems: list[Problem]


# Who may call (auth.Guard, surface.Surface): when tokens are configured.
DOOR = {
    401: "no bearer token, or not a valid one (when tokens are configured)",
    403: "a token of the other scope",
}
ERRORS = {
    400: "the body is not JSON",
    **DOOR,
    408: "the body did not arrive whole within the body-read timeout",
    413: "the body or the batch is too large",
    422: "wrong shape, wrong types, or values that break the landing contract (row and field named)",
    429: "too many requests in flight: retry after the Retry-After header's seconds",
    503: "no model to serve yet, or the online store is unavailable (the error says which); retry",
}
OPERATIONS_ERRORS = {status: {"model": ErrorResponse, "description": what} for status, what in DOOR.items()}


# A body up to this size (a handful of transactions) is validated and scored on the event loop.
INLINE_BODY_BYTES = 4096


def _json(status: int, body: dict, headers: dict | None = None) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _scored(result: dict) -> Response:
    """A prediction's answer. orjson writes it in a tenth of json.dumps' time (the same JSON; floats
    as the shortest text that reads back the same); every text in it passed validation or came from
    the registry, so it is valid UTF-8, which orjson insists on."""
    return Response(
        orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers={"X-Request-ID": result["request_id"]},
    )


class ClientGone(Exception):
    """The client disconnected before its body arrived whole: nobody to answer."""


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length", "")
    # isascii: str.isdigit() is also True for "²" and other digits int() may refuse.
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body is larger than {limit} bytes")
    chunks, size = [], 0
    try:
        # The whole body, not each chunk: a client dripping a byte at a time is cut off too.
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # a body without (or with a false) Content-Length
                    raise RequestError(413, f"body is larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g} s ({size} bytes came)") from None
    except ClientDisconnect:
        raise ClientGone(f"{size} of {declared} body bytes" if declared else f"{size} body bytes") from None
    return b"".join(chunks)


def _documented(app: FastAPI, path: str, **openapi):
    """POST `path`, served by a plain Starlette route and documented by FastAPI's: FastAPI's own
    route solves the endpoint's dependencies on every request (17 us of a request's ~300, for an
    endpoint that takes the bare Request). The plain route comes first, so it is the one that
    answers (a wrong method there is the same 405); FastAPI's stays for the OpenAPI schema."""

    def register(endpoint):
        app.post(path, **openapi)(endpoint)
        app.router.routes.insert(len(app.router.routes) - 1, Route(path, endpoint, methods=["POST"]))
        return endpoint

    return register


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


def create_app(service: Service) -> FastAPI:
    settings = service.settings
    guard = Guard({SCORING: settings.scoring_tokens, OPERATIONS: settings.operations_tokens})
    # What an error may say about where the service reads and writes: the store by scheme and host.
    uris = (settings.tracking_uri, settings.online_store)
    places = {form: address(uri) for uri in uris for form in (uri, redacted(uri))}

    def public(reason: str) -> str:
        for place, shown in places.items():
            reason = reason.replace(place, shown)
        return scrubbed(reason)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="ml_assets fraud scoring",
        description="Scores card transactions (landing-contract fields) with the registered model's "
        "deployment: strategy and aliases from the MLflow registry. When tokens are configured, "
        "/predict takes the scoring token and /model, /health/details and these docs the operations "
        "token, as `Authorization: Bearer <token>`; /health never needs one.",
        lifespan=lifespan,
        # surface.Surface drops a trailing slash: no 307 to the other spelling.
        redirect_slashes=False,
    )
    app.state.service = service
    app.add_middleware(Surface, guard=guard, max_in_flight=settings.max_in_flight)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> Response:
        body = e.body() | {"error": public(e.reason)}
        if e.status == 408:
            log.info("%s %s from %s: %s", request.method, request.url.path, _client(request), e.reason)
            # The client still owes bytes of that body: close rather than wait for them.
            return _json(e.status, body, headers={"Connection": "close"})
        return _json(e.status, body)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, e: ClientGone) -> Response:
        log.info("%s %s: %s disconnected after %s", request.method, request.url.path, _client(request), e)
        return Response(status_code=400)  # uvicorn sends nothing to a closed connection

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:  # 404, 405
        body = error_body(str(e.detail))
        return Response(body, e.status_code, headers=e.headers, media_type="application/json")

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> Response:
        # Starlette still raises it on after this answer: the log gets the traceback, not the caller.
        return Response(error_body("internal error"), 500, media_type="application/json")

    @_documented(
        app,
        "/predict",
        response_model=PredictResponse,
        responses={status: {"model": ErrorResponse, "description": what} for status, what in ERRORS.items()},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_body_schema(settings.max_batch)}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        """Score one transaction, or a batch as {"transactions": [...]}: a fraud score per
        transaction, with the model version, alias and arm that produced it. A 200 means every
        decision is durably recorded; a transaction sent again gets its recorded decision back."""
        body = await _read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
        if len(body) <= INLINE_BODY_BYTES:
            result = await service.predict(validate(body, settings.max_batch))
        else:
            # A batch is validated and scored in worker threads, not on the event loop: the loop
            # keeps serving single rows beside it (the interpreter switches threads every 0.5 ms,
            # and LightGBM releases the GIL). A few rows are cheaper than the thread hops.
            transactions = await anyio.to_thread.run_sync(validate, body, settings.max_batch)
            result = await service.predict(transactions, offload=anyio.to_thread.run_sync)
        return _scored(result)

    @app.get("/health", responses={503: {"description": "not ready: no model to serve yet"}})
    async def health() -> Response:
        """Readiness, for a load balancer: 200 when the service can score, 503 until it can. No
        token, no details (those are /health/details)."""
        ready = service.deployment is not None
        return _json(200 if ready else 503, {"status": "ok" if ready else "not_ready"})

    @app.get(
        "/health/details", responses={503: {"description": "no model to serve yet"}, **OPERATIONS_ERRORS}
    )
    async def health_details() -> Response:
        """Whether the service can score, which versions serve which traffic share, and the state
        of the registry poller and of the online store."""
        status, body = service.health()
        return _json(status, body)

    @app.get("/model", responses=OPERATIONS_ERRORS)
    async def model() -> JSONResponse:
        """The deployment: strategy, its configuration tags, and each arm's alias, version,
        traffic share and role (serving, shadow or standby)."""
        return JSONResponse(service.model())

    return app


def app_from_env() -> FastAPI:
    """The app as one worker process builds it: settings from the environment (uvicorn's
    `factory=True`, so each of `--workers N` processes has its own Service on the shared store)."""
    import sys

    from ml_assets.serving.settings import ServingSettings

    # The registry poller runs Python in a thread beside the event loop: hand the GIL back to the
    # loop after 0.5 ms rather than the default 5 ms, or its work shows up as pauses of several ms
    # in request latency.
    sys.setswitchinterval(0.0005)
    settings = ServingSettings.from_env()
    log.info("settings: %s", settings)
    return create_app(Service(settings))
