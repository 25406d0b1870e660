"""Request ids, one JSON log line per request, and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("weightscope_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("weightscope_http_request_duration_seconds", "HTTP request latency", ["method", "route"])
UPLOAD_BYTES = Counter("weightscope_upload_bytes_total", "Bytes of accepted checkpoint uploads")
UPLOADS_REJECTED = Counter("weightscope_uploads_rejected_total", "Refused uploads", ["reason"])
JOBS_SUBMITTED = Counter("weightscope_jobs_submitted_total", "Jobs enqueued", ["kind"])

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
access_log = logging.getLogger("weightscope.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for key in ("request_id", "method", "path", "status", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("weightscope")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class RequestContext:
    """ASGI middleware: honour or mint X-Request-ID, echo it back, time and log the request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        body_limit_reply = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, body_limit_reply
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 413 and (b"content-type", b"text/plain; charset=utf-8") in message.get("headers", []):
                    body_limit_reply = True  # Starlette's body-size limit answers in plain text: restate it below
                    return
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            elif body_limit_reply and message["type"] == "http.response.body":
                limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY)
                body = json.dumps({
                    "type": "/problems/request-too-large", "title": "Request too large", "status": 413,
                    "detail": f"request body exceeds this endpoint's limit of {limit} bytes", "instance": scope["path"],
                    "request_id": request_id,
                }).encode()
                headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
                           (b"x-request-id", request_id.encode())]
                await send({"type": "http.response.start", "status": 413, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(scope["method"], template).observe(elapsed)
            access_log.info(
                "request",
                extra={"request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status,
                       "duration_ms": round(elapsed * 1000, 2)},
            )


def metrics_response(_: Request) -> Response:
    """This process's metrics, or with several API processes (PROMETHEUS_MULTIPROC_DIR set) the sum over them."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
