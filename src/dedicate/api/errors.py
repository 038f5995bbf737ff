"""The one boundary where errors become HTTP answers: ``{"error": {...}}``, never a bare 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dedicate.domain.errors import DedicateError

log = logging.getLogger("dedicate.api")

_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "invalid_request_error", 405: "invalid_request_error",
                 413: "invalid_request_error", 422: "invalid_request_error",
                 429: "rate_limit_error"}


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
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such path: {request.method} {request.url.path}; see docs/api.md"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message,
                              type_=_STATUS_TYPES.get(exc.status_code, "invalid_request_error"),
                              code="not_found" if exc.status_code == 404 else None,
                              headers={"x-should-retry": "false"} if exc.status_code < 500 else None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return error_response(400, f"invalid {loc or 'request'}: {first.get('msg', 'bad value')}",
                              type_="invalid_request_error", code="invalid_request", param=loc or None,
                              headers={"x-should-retry": "false"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error: the server hit a bug; it was logged",
                              type_="server_error", code="internal_error")
