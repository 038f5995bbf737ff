"""The one error taxonomy of dedicate.

Every error a user can cause is a :class:`DedicateError` subclass with an HTTP
status, a machine code and a message that says what to do next. Faces map
them at one boundary (``api/errors.py``, and the gateway's own ASGI front) with
``envelope`` and ``hint_headers``, so both answer alike.

    DedicateError
    ├── InvalidRequest          400  invalid_request_error
    │   ├── HardwareUnavailable 400  hardware_unavailable (never retry)
    │   ├── QuotaExceeded       400  quota_exceeded
    │   └── EndpointStopped     400  endpoint_stopped
    ├── Unauthorized            401  authentication_error
    ├── Forbidden               403  permission_error
    ├── NotFound                404  not_found
    ├── Conflict                409  conflict
    ├── RateLimited             429  rate_limit_exceeded
    └── Unavailable             503  service_unavailable
"""

from __future__ import annotations


class DedicateError(Exception):
    """Base of every user-visible error."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    should_retry: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def envelope(self) -> dict[str, dict[str, str | None]]:
        """The body every face answers with (the OpenAI and Together shape)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def hint_headers(self) -> dict[str, str]:
        """``x-should-retry: false`` where retrying cannot help; ``retry-after`` (whole seconds) where it can."""
        headers = {}
        if self.should_retry is False:
            headers["x-should-retry"] = "false"
        if self.retry_after_s is not None:
            headers["retry-after"] = str(max(1, int(self.retry_after_s + 0.999)))
        return headers


class InvalidRequest(DedicateError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    should_retry = False


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class RequestTimeout(InvalidRequest):
    """The request's body did not arrive in time: a slow or stalled sender holds no connection forever."""

    status = 408
    code = "request_timeout"


def body_timeout(limit_s: float) -> RequestTimeout:
    """What a sender hears whose body did not arrive within ``limit_s`` (the gateway's and the API's alike)."""
    return RequestTimeout(f"the request body did not arrive within {limit_s:g} s; send it whole, at once")


class HardwareUnavailable(InvalidRequest):
    code = "hardware_unavailable"


class QuotaExceeded(InvalidRequest):
    code = "quota_exceeded"


class EndpointStopped(InvalidRequest):
    code = "endpoint_stopped"


class Unauthorized(DedicateError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    should_retry = False


class Forbidden(DedicateError):
    status = 403
    type = "permission_error"
    code = "forbidden"
    should_retry = False


class NotFound(DedicateError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    should_retry = False


class Conflict(DedicateError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    should_retry = False


class RateLimited(DedicateError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Unavailable(DedicateError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
