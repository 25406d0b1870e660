"""A tiny recording HTTP server on 127.0.0.1 that stands in for the Weightscope API in client tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


class FakeServer:
    """Records every request; answers from ``routes`` ((method, path) -> handler(request) -> (status, headers,
    body)) or with 202 for telemetry posts and 404 problem+json otherwise. ``delay`` slows every answer."""

    def __init__(self):
        self.requests: list[dict] = []
        self.routes: dict = {}
        self.delay = 0.0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                           "headers": dict(self.headers), "body": body}
                with server.lock:
                    server.requests.append(request)
                if server.delay:
                    time.sleep(server.delay)
                handler = server.routes.get((self.command, url.path))
                if handler is not None:
                    status, headers, payload = handler(request)
                elif self.command == "POST" and url.path.endswith("/telemetry"):
                    status, headers, payload = 202, {}, {"accepted": len(json.loads(body)["records"])}
                else:
                    status, headers = 404, {"Content-Type": "application/problem+json"}
                    payload = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": url.path}
                if payload is None or isinstance(payload, bytes):
                    data = payload or b""
                else:
                    data = json.dumps(payload).encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def telemetry_records(self) -> list[dict]:
        """All records posted to any run's telemetry endpoint, in arrival order."""
        with self.lock:
            posts = [r for r in self.requests if r["method"] == "POST" and r["path"].endswith("/telemetry")]
        return [rec for r in posts for rec in json.loads(r["body"])["records"]]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    server = FakeServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_server():
    """One server for a module whose tests share an expensive fixture."""
    server = FakeServer()
    yield server
    server.stop()


@pytest.fixture
def closed_port_url():
    """A loopback URL nobody listens on (bound then closed, so connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
