"""RFC 9457 problem details for every error the API returns; never a stack trace."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.formats import CheckpointRejected

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("weightscope.errors")


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document. `slug` names the type: /problems/<slug>."""

    def __init__(self, status: int, slug: str, detail: str, title: str | None = None, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail
        self.title = title or slug.replace("-", " ").capitalize()
        self.headers = headers or {}
        self.extra = extra

    def document(self) -> dict:
        return {"type": f"/problems/{self.slug}", "title": self.title, "status": self.status, "detail": self.detail, **self.extra}


def not_found(what: str, ident: str) -> Problem:
    return Problem(404, "not-found", f"{what} {ident!r} does not exist", title="Not found")


def respond(request: Request, problem: Problem) -> JSONResponse:
    body = problem.document()
    body["instance"] = request.url.path
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=problem.status, media_type=MEDIA_TYPE, headers=problem.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return respond(request, exc)

    @app.exception_handler(CheckpointRejected)
    async def _rejected(request: Request, exc: CheckpointRejected):
        return respond(request, Problem(exc.status, exc.kind, exc.detail))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        phrase = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) else phrase
        return respond(request, Problem(exc.status_code, phrase.lower().replace(" ", "-"), detail, title=phrase, headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [
            {"location": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors) or "request is invalid"
        return respond(request, Problem(422, "validation-error", detail, title="Invalid request", errors=errors))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return respond(request, Problem(500, "internal-error", "the server failed to handle this request; see its log", title="Internal error"))
