"""The HTTP face of the service (FastAPI): POST /predict, GET /health, GET /model.

Thin on purpose: the body is read here (with a size limit), judged by `validation`, scored by
`Service`. Card history and decisions live in the online store, so any number of processes may
serve (`python -m ml_assets.serving --workers N` runs N of them on one port: `app_from_env` is
what each builds).
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ml_assets.serving.service import Service
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


ERRORS = {
    400: "the body is not JSON",
    413: "the body or the batch is too large",
    422: "wrong shape, wrong types, or values that break the landing contract (row and field named)",
    503: "no model to serve yet, or the online store is unavailable (the error says which); retry",
}


def _json(status: int, body: dict, headers: dict | None = None) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    # isascii: str.isdigit() is also True for "²" and other digits int() may refuse.
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a body without (or with a false) Content-Length
            raise RequestError(413, f"body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: Service) -> FastAPI:
    settings = service.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="ml_assets fraud scoring",
        description="Scores card transactions (landing-contract fields) with the registered model's "
        "deployment: strategy and aliases from the MLflow registry.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> Response:
        return _json(e.status, e.body())

    @app.post(
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
        body = await _read_body(request, settings.max_body_bytes)
        result = service.predict(validate(body, settings.max_batch))
        return _json(200, result, headers={"X-Request-ID": result["request_id"]})

    @app.get("/health", responses={503: {"description": "no model to serve yet"}})
    async def health() -> Response:
        """Whether the service can score, which versions serve which traffic share, and the state
        of the registry poller and of the online store."""
        status, body = service.health()
        return _json(status, body)

    @app.get("/model")
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
