"""The one boundary where errors become HTTP answers: ``{"error": {...}}``, never a bare 500.

Bodies and query parameters are checked by the domain's ``validate_*`` functions, whose
:class:`DedicateError` reaches ``_dedicate`` unchanged; what pydantic itself refuses (a path or
parameter of the wrong type, malformed JSON) is a ``RequestValidationError``, answered in the
same envelope by ``_validation``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from dedicate.domain.errors import DedicateError

log = logging.getLogger("dedicate.api")

_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "invalid_request_error", 405: "invalid_request_error",
                 413: "invalid_request_error", 422: "invalid_request_error",
                 429: "rate_limit_error"}


class ErrorBody(BaseModel):
    message: str = Field(description="what went wrong and what to do next")
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, "
                                  "rate_limit_error, service_unavailable or server_error")
    param: str | None = Field(description="the field or parameter at fault, e.g. autoscaling.min_replicas")
    code: str | None = Field(description="a machine code, e.g. invalid_request, hardware_unavailable, "
                                         "endpoint_not_found (docs/api.md lists them)")


class ErrorEnvelope(BaseModel):
    """Every error, from every route: the shape Together's and OpenAI's clients read."""

    error: ErrorBody


_WHEN = {400: "a field is missing or wrong, or the request cannot be met here",
         401: "no API key, an unknown one, or a revoked one", 403: "an admin-only action",
         404: "no such endpoint (or not yours), key, owner or path", 409: "the state machine forbids this change"}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route: the error envelope at each status, and for any other error.

    Declaring ``default`` also keeps FastAPI from documenting its own 422 body, which this API never sends.
    """
    out: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorEnvelope, "description": _WHEN.get(s, "an error")} for s in sorted({401, *statuses})}
    out["default"] = {"model": ErrorEnvelope, "description": "any other error (429, 5xx), in the same envelope"}
    return out


def referenced(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` with the envelope by reference, as JSON: for a route whose own answer is not JSON
    (FastAPI would document a ``model`` in the route's media type), and for paths outside FastAPI."""
    return {status: {"description": r["description"], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}} for status, r in responses(*statuses).items()}


def error_response(status: int, message: str, *, type_: str, code: str | None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def from_exception(exc: DedicateError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.hint_headers())


def install(app: FastAPI) -> None:
    @app.exception_handler(DedicateError)
    async def _dedicate(_: Request, exc: DedicateError) -> JSONResponse:
        return from_exception(exc)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message, code = str(exc.detail), {404: "not_found", 400: "invalid_request"}.get(exc.status_code)
        if exc.status_code == 404:
            message = f"no such path: {request.method} {request.url.path}; see docs/api.md"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and isinstance(exc.__cause__, ValueError):  # FastAPI could not read the JSON
            message = f"the request body is not valid JSON: {exc.__cause__}"
        return error_response(exc.status_code, message,
                              type_=_STATUS_TYPES.get(exc.status_code, "invalid_request_error"), code=code,
                              headers={"x-should-retry": "false"} if exc.status_code < 500 else None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = tuple(first.get("loc", ()))
        loc = ".".join(str(p) for p in where[1:] if not isinstance(p, int)) if where else ""
        if first.get("type") == "json_invalid":  # said as json.loads says it, with the position
            error = json.JSONDecodeError(first.get("ctx", {}).get("error", "bad JSON"), str(exc.body or ""),
                                         where[1] if len(where) > 1 and isinstance(where[1], int) else 0)
            message, loc = f"the request body is not valid JSON: {error}", ""
        elif where[:1] == ("body",) and first.get("type") == "missing" and len(where) == 1:
            message = "the request body must be a JSON object"
        else:
            message = f"invalid {loc or 'request'}: {first.get('msg', 'bad value')}"
        return error_response(400, message, type_="invalid_request_error", code="invalid_request",
                              param=loc or None, headers={"x-should-retry": "false"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error: the server hit a bug; it was logged",
                              type_="server_error", code="internal_error")
