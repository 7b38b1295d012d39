"""The service's closed set of errors, each mapped to one HTTP status in one place.

The data plane raises these (it knows nothing of HTTP beyond the status each class carries, as MLServer's
`MLServerError` does); each protocol adapter renders them (`service.http.error_handlers` for HTTP) as
`{"error": "...", "error_type": "..."}`. No web framework here, so any adapter can import this module.
Messages are written for clients: they never carry stack traces, paths of the host or secrets.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


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
