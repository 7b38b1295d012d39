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
    SHOWN_CHARS,
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
    clip,
    error_body,
)
from service.http.paths import OIP_PREFIX

log = logging.getLogger("service.errors")

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


# A 422 names this many failures and counts the rest: its body and the work to build it stay small
# whatever the request holds.
MAX_SHOWN_ERRORS = 3
_MAX_MSG_CHARS = 200


def validation_message(detail: list[dict[str, Any]], omitted: int = 0) -> str:
    """'field: problem; other: problem (and N more)' from pydantic-style error entries."""
    parts = []
    for entry in detail[:MAX_SHOWN_ERRORS]:
        loc = [str(p) for p in entry.get("loc", ()) if p not in ("body", "query")]
        parts.append(f"{'.'.join(loc) or 'request'}: {entry.get('msg', 'invalid')}")
    omitted += max(0, len(detail) - MAX_SHOWN_ERRORS)
    text = "; ".join(parts) or "invalid request"
    return text + (f" (and {omitted} more)" if omitted else "")


def _loc_part(part: Any) -> Any:
    # Keys come from the client: a field name of megabytes is shown by its head.
    if isinstance(part, str) and len(part) > SHOWN_CHARS:
        return f"{part[:SHOWN_CHARS]}... ({len(part)} characters)"
    return part


async def on_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return render(request, exc)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    omitted = getattr(exc, "omitted", 0) + max(0, len(errors) - MAX_SHOWN_ERRORS)
    detail = [
        {
            "loc": [_loc_part(p) for p in e.get("loc", ())],
            "msg": clip(str(e.get("msg", "")), _MAX_MSG_CHARS),
            "type": e.get("type", ""),
        }
        for e in errors[:MAX_SHOWN_ERRORS]
    ]
    extra: dict[str, Any] = {"detail": detail}
    if omitted:
        extra["omitted"] = omitted
    return render(request, InvalidInput(validation_message(detail, omitted)), extra)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    cls = _HTTP_STATUS_ERRORS.get(exc.status_code)
    if cls is None:
        return JSONResponse(
            error_body(str(exc.detail), ErrorType.invalid_input),
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
