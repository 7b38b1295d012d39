"""HTTP rendering of the closed error set: one handler per source of errors, one body shape, per protocol.

`/v1` answers each error with the status its class carries; the Open Inference Protocol (`/v2`) answers bad
input with 400, as the protocol asks. Both bodies are `{"error": "...", "error_type": "..."}`. Routes list
their errors with `responses(...)` so OpenAPI shows them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.errors import (
    ErrorType,
    InferenceFailed,
    InvalidInput,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Timeout,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger("service.errors")

OIP_PREFIX = "/v2/"

# Statuses Starlette raises itself (unknown route, wrong method, bad multipart), in the same body shape.
_HTTP_STATUS_ERRORS: dict[int, type[ServiceError]] = {
    400: InvalidInput,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}

# For `responses=` in route declarations, so OpenAPI documents each route's errors.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "error_type": {"type": "string", "enum": [e.value for e in ErrorType]},
    },
    "required": ["error", "error_type"],
}


# What an inference operation can answer besides success, on every protocol.
INFERENCE_ERRORS: tuple[type[ServiceError], ...] = (
    InvalidInput, ModelNotFound, PayloadTooLarge, UnsupportedMediaType, Unauthorized, NotReady, Overloaded,
    Timeout, InferenceFailed,
)  # fmt: skip


def responses(*errors: type[ServiceError], oip: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given errors (several classes may share a status)."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        entry = out.setdefault(
            status_of(err, oip),
            {"description": "", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
        )
        entry["description"] = " or ".join(filter(None, [entry["description"], err.error_type.value]))
    return out


def status_of(err: ServiceError | type[ServiceError], oip: bool) -> int:
    """The status an error is sent with: the class's own, except bad input on the OIP routes (400)."""
    cls = err if isinstance(err, type) else type(err)
    return 400 if oip and issubclass(cls, InvalidInput) else cls.status


def render(request: Request, err: ServiceError, extra: dict[str, Any] | None = None) -> Response:
    status = status_of(err, request.url.path.startswith(OIP_PREFIX))
    return JSONResponse({**err.body(), **(extra or {})}, status_code=status, headers=err.headers)


def validation_message(detail: list[dict[str, Any]]) -> str:
    """'field: problem; other: problem' from pydantic-style error entries."""
    parts = []
    for entry in detail[:5]:
        loc = [str(p) for p in entry.get("loc", ()) if p not in ("body", "query")]
        parts.append(f"{'.'.join(loc) or 'request'}: {entry.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def on_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return render(request, exc)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return render(request, InvalidInput(validation_message(detail)), {"detail": detail})


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    cls = _HTTP_STATUS_ERRORS.get(exc.status_code)
    if cls is None:
        return JSONResponse(
            {"error": str(exc.detail), "error_type": ErrorType.invalid_input.value},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    err = cls(str(exc.detail))
    err.headers.update(exc.headers or {})
    return render(request, err)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    # Anything that escaped the closed set: log it with its traceback, answer generically.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return render(request, InferenceFailed("internal error; the error was logged"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
