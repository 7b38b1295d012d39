"""The service's closed set of errors, each mapped to one HTTP status in one place.

The data plane raises these (it knows nothing of HTTP beyond the status each class carries, as MLServer's
`MLServerError` does); `install_error_handlers` turns every one into `{"error": "...", "error_type": "..."}`.
Messages are written for clients: they never carry stack traces, paths of the host or secrets.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


class ErrorType(StrEnum):
    invalid_input = "invalid_input"
    model_not_found = "model_not_found"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    unsupported_media_type = "unsupported_media_type"
    payload_too_large = "payload_too_large"
    unauthorized = "unauthorized"
    not_ready = "not_ready"
    overloaded = "overloaded"
    timeout = "timeout"
    inference_failed = "inference_failed"


class ServiceError(Exception):
    """Base class: an HTTP status, a stable `error_type`, a client-safe message and optional headers."""

    status: ClassVar[int] = 500
    error_type: ClassVar[ErrorType] = ErrorType.inference_failed

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": self.error_type.value}


class InvalidInput(ServiceError):
    status, error_type = 422, ErrorType.invalid_input


class ModelNotFound(ServiceError):
    status, error_type = 404, ErrorType.model_not_found


class NotFound(ServiceError):
    status, error_type = 404, ErrorType.not_found


class MethodNotAllowed(ServiceError):
    status, error_type = 405, ErrorType.method_not_allowed


class UnsupportedMediaType(ServiceError):
    status, error_type = 415, ErrorType.unsupported_media_type


class PayloadTooLarge(ServiceError):
    status, error_type = 413, ErrorType.payload_too_large


class Unauthorized(ServiceError):
    status, error_type = 401, ErrorType.unauthorized

    def __init__(self, message: str = "missing or invalid API key"):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotReady(ServiceError):
    status, error_type = 503, ErrorType.not_ready


class Overloaded(ServiceError):
    status, error_type = 503, ErrorType.overloaded

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class Timeout(ServiceError):
    status, error_type = 504, ErrorType.timeout


class InferenceFailed(ServiceError):
    status, error_type = 500, ErrorType.inference_failed

    def __init__(self, message: str = "inference failed; the error was logged"):
        super().__init__(message)


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


def responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given errors (several classes may share a status)."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        entry = out.setdefault(
            err.status, {"description": "", "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        )
        entry["description"] = " or ".join(filter(None, [entry["description"], err.error_type.value]))
    return out


def install_error_handlers(app: FastAPI) -> None:
    """One handler per source of errors, all producing the same body shape."""
    # Imported here so the data plane can raise these errors without importing the web framework.
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    def render(err: ServiceError, extra: dict[str, Any] | None = None) -> Response:
        return JSONResponse({**err.body(), **(extra or {})}, status_code=err.status, headers=err.headers)

    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return render(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return render(InvalidInput(validation_message(detail)), {"detail": detail})

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
        return render(err)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Anything that escaped the closed set: log it with its traceback, answer generically.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render(InferenceFailed("internal error; the error was logged"))

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def validation_message(detail: list[dict[str, Any]]) -> str:
    """'field: problem; other: problem' from pydantic-style error entries."""
    parts = []
    for entry in detail[:5]:
        loc = [str(p) for p in entry.get("loc", ()) if p not in ("body", "query")]
        parts.append(f"{'.'.join(loc) or 'request'}: {entry.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
