"""One exception hierarchy for wattwise.

Every backend error is mapped into it at the boundary, so the API layer turns any of them into
OpenAI's error body with the right status::

    WattwiseError
    ├── ConfigError               bad config file: names the key and its line
    ├── OutcomesError             bad outcomes file: names the file and line
    ├── StoreError                trace store failure
    ├── InternalError             500, a bug: an exception nobody expected, mapped at the call's end
    ├── RequestError              the caller's mistake (4xx)
    │   ├── InvalidRequest        400, a bad field
    │   ├── AuthenticationError   401, a missing, wrong, expired or revoked API key (never says which)
    │   ├── PermissionDenied      403, the key may not do this (a model it may not use, admin routes)
    │   ├── ModelNotFound         404, unknown model
    │   ├── NotFound              404, no such file or batch
    │   ├── RequestTimeout        408, the body did not arrive in time
    │   ├── PayloadTooLarge       413, body over the limit
    │   ├── UnsupportedMediaType  415, a JSON endpoint sent another content type
    │   ├── Unprocessable         422, well-formed but cannot be served
    │   ├── QuotaExceeded         429, a $ or J budget would be exceeded (names it and its reset)
    │   └── RateLimited           429, a key's requests or tokens per minute, with Retry-After
    └── BackendError              the upstream failed (5xx, or its own 4xx passed on)
        ├── UpstreamError         502, upstream 5xx or broken response
        ├── UpstreamTimeout       504
        ├── UpstreamRejected      upstream's own 4xx (status passed through)
        │   └── UpstreamRateLimited   429, with the upstream's retry-after and x-ratelimit-* headers
        └── UnknownPrompt         404, a replay backend has no recorded answer

Usage::

    try:
        ...
    except WattwiseError as exc:
        body = exc.to_body()   # {"error": {"message", "type", "param", "code"}}
"""

from __future__ import annotations

from typing import Any


class WattwiseError(Exception):
    """Root of every error wattwise raises on purpose."""

    status: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        """OpenAI's error body for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(WattwiseError):
    """A config file that does not parse or validate; ``line`` is 1-based when known."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        where = ":".join(str(p) for p in (path, line) if p is not None)
        text = f"{where}: {message}" if where else message
        if key:
            text = f"{text} (key '{key}')"
        super().__init__(text, param=key)
        self.path = path
        self.key = key
        self.line = line


class OutcomesError(WattwiseError):
    """An outcomes file line that is missing a field or has a bad value."""

    def __init__(self, message: str, *, path: str, line: int | None = None,
                 field: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}", param=field)
        self.path = path
        self.line = line
        self.field = field


class StoreError(WattwiseError):
    """The trace store failed."""


class InternalError(WattwiseError):
    """An exception nobody expected; the client gets this, the log and trace row get the cause."""

    status = 500
    error_type = "server_error"
    code = "internal_error"


class RequestError(WattwiseError):
    """The caller's mistake."""

    status = 400
    error_type = "invalid_request_error"


class InvalidRequest(RequestError):
    status = 400
    code = "invalid_value"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class RequestTimeout(RequestError):
    """408: the body did not arrive in time (a client sent less than its Content-Length, or stalled)."""

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(RequestError):
    """415: a JSON endpoint got a body that is not declared as JSON."""

    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class Unprocessable(RequestError):
    status = 422
    code = "unprocessable"



class AuthenticationError(RequestError):
    """401: no key, or one that is not valid (the message never says whether a key exists)."""

    status = 401
    code = "invalid_api_key"


class PermissionDenied(RequestError):
    """403: a valid key asked for what it may not do."""

    status = 403
    code = "permission_denied"


class _Limited(RequestError):
    """A 429 of wattwise's own, carrying the headers to send (``retry-after``, ``x-ratelimit-*``)."""

    status = 429

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.headers = dict(headers or {})


class QuotaExceeded(_Limited):
    """429 ``insufficient_quota``: the request's worst case does not fit a budget."""

    error_type = "insufficient_quota"
    code = "insufficient_quota"


class RateLimited(_Limited):
    """429 ``rate_limit_exceeded``: a key's requests or tokens per minute are used up."""

    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

class BackendError(WattwiseError):
    """The model backend failed.

    ``headers`` are the upstream's headers worth passing to the client (``retry-after``,
    ``x-ratelimit-*``); ``retry_after_s`` is the upstream's ``Retry-After`` in seconds, when it sent one.
    """

    status = 502
    error_type = "upstream_error"
    code = "upstream_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.headers = dict(headers or {})
        self.retry_after_s = retry_after_s


class UpstreamError(BackendError):
    status = 502


class UpstreamTimeout(BackendError):
    status = 504
    code = "upstream_timeout"


class UpstreamRejected(BackendError):
    """The upstream refused the request with its own 4xx; we pass its status on."""

    error_type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, param=param, code=code, headers=headers, retry_after_s=retry_after_s)
        self.status = status


class UpstreamRateLimited(UpstreamRejected):
    """The upstream said 429: passed on as OpenAI's ``rate_limit_error`` with its headers."""

    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, status=429, param=param, code=code, headers=headers,
                         retry_after_s=retry_after_s)


class UnknownPrompt(BackendError):
    status = 404
    error_type = "invalid_request_error"
    code = "unknown_prompt"
