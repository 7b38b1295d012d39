"""The service's closed set of errors, each mapped to one HTTP status in one place.

The data plane raises these (it knows nothing of HTTP beyond the status each class carries, as MLServer's
`MLServerError` does); each protocol adapter renders them (`service.http.error_handlers` for HTTP) as
`{"error": "...", "error_type": "..."}`. No web framework here, so any adapter can import this module.
Messages are written for clients: they never carry stack traces, paths of the host or secrets.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

# An error message is written for a person: past this length it says no more, and a client's own long string
# (a model name of megabytes) cannot make an error body, a log line or a gRPC status as large as itself.
MAX_MESSAGE_CHARS = 1024
SHOWN_CHARS = 64


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A client-supplied value for an error message: its repr, cut to `limit` characters with the length
    said. Only a string's head is ever formatted, so a huge value costs nothing to show."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return repr(value)
    return f"<{type(value).__name__}>"


def clip(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


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


# nginx's status for "client closed the request": logged and counted by every protocol, never sent (there is
# no one to send it to).
CLIENT_CLOSED = 499


def error_body(message: str, error_type: ErrorType) -> dict[str, str]:
    """The one shape of every error answer, on every protocol that writes JSON."""
    return {"error": message, "error_type": error_type.value}


class ServiceError(Exception):
    """Base class: an HTTP status, a stable `error_type`, a client-safe message and optional headers."""

    status: ClassVar[int] = 500
    error_type: ClassVar[ErrorType] = ErrorType.inference_failed

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        message = clip(message)
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type)


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
