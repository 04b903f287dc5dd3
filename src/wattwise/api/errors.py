"""OpenAI's error body for any wattwise error, and for the few Starlette raises itself.

Usage::

    return error_response(ModelNotFound("no model 'x'", param="model"), request_id="req_1")
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from wattwise.exceptions import WattwiseError


def error_response(exc: WattwiseError, *, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)
