"""The lean path for dashboards polling a run's warnings: `GET /v1/runs/{id}/warnings` (no long-poll) answered
from WarningPages without FastAPI's routing, dependency solving and validation, which cost most of a poll's time.

It answers only what it can answer exactly as the route would: an authorised request with well-formed `since` and
`limit` and no `wait` (or `wait=0`), for a run that exists: a 304 for a matching If-None-Match, else the page,
rendered once per burst by the same code as the route's when it is not cached; the route's 401 (auth.check_key)
and 404 problems for a missing or rejected key and an unknown run. Everything else (a bad parameter, a long-poll)
goes on to the route. It sits inside RequestContext, so request ids, the access log and the metrics (under the
route's template) are the same as for the route."""

from __future__ import annotations

import re
from functools import partial
from urllib.parse import parse_qsl

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from . import problems
from .auth import bearer_token, check_key
from .problems import Problem
from .routers import runs as runs_router

_PATH = re.compile(r"/v1/runs/([^/]+)/warnings")
_DIGITS = re.compile(r"[0-9]+")
_LIMIT = re.compile(r"[1-9][0-9]{0,3}")
_NO_WAIT = re.compile(r"0(\.0+)?")
_ROUTE = next(r for r in runs_router.router.routes if getattr(r, "name", None) == "get_warnings")
_DEFAULT_LIMIT = 100
_MAX_LIMIT = 1000


def _parameters(query_string: bytes) -> tuple[int, int] | None:
    """(cursor, limit) as the route reads them, or None for anything the route should judge (400, 422, wait)."""
    cursor, limit = 0, _DEFAULT_LIMIT
    if not query_string:
        return cursor, limit
    seen: set[str] = set()
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return None  # repeated: the route takes the last one; leave it to the route
        seen.add(name)
        if name == "since":
            if value:
                if not _DIGITS.fullmatch(value):
                    return None
                cursor = int(value)
        elif name == "limit":
            if not _LIMIT.fullmatch(value) or int(value) > _MAX_LIMIT:
                return None
            limit = int(value)
        elif name == "wait" and not _NO_WAIT.fullmatch(value):
            return None
    return cursor, limit


class WarningsFastPath:
    """ASGI middleware: answers warnings polls itself where it can, and passes every other request on unchanged."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.fullmatch(get_route_path(scope))
            if match and await self._answer(scope, receive, send, match.group(1)):
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> bool:
        parameters = _parameters(scope["query_string"])
        if parameters is None:
            return False
        cursor, limit = parameters
        authorization = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"if-none-match" and if_none_match is None:
                if_none_match = value.decode("latin-1")
        state = scope["app"].state
        pages, services = state.warning_pages, state.services
        try:
            check_key(state.keys, bearer_token(authorization))
            latest = await pages.newest_async(services, run_id)
            etag = runs_router.warnings_etag(latest, cursor)
            if if_none_match == etag:
                status, body = 304, b""
            else:
                render = partial(runs_router.render_warnings_page, services, run_id, cursor, limit)
                body, shown = await pages.page_async(run_id, cursor, limit, latest, render)
                status, etag = 200, runs_router.warnings_etag(shown, cursor)
        except Problem as problem:  # 401 or 404, in the words of the route's exception handler
            scope["route"], scope["path_params"] = _ROUTE, {"run_id": run_id}
            await problems.respond(Request(scope), problem)(scope, receive, send)
            return True
        headers = [(b"etag", etag.encode("latin-1")), (b"cache-control", b"no-cache")]
        if status == 200:
            headers += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        scope["route"], scope["path_params"] = _ROUTE, {"run_id": run_id}
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True
