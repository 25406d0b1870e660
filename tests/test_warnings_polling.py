"""Polling a run's warnings: the lean ASGI path answers exactly as the route does (and only when it can), a burst
of polls reads the database once, and a server with several API processes stays correct across them."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

import app.runs as run_service
from app.main import create_app
from app.services import Services
from app.warnings_fast_path import WarningsFastPath
from storage import keys

from .conftest import free_port
from .test_runs_api import _loss_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def answered(monkeypatch) -> list[bool]:
    """True for each request the lean path answered, False for each it passed on to the route."""
    record: list[bool] = []
    original = WarningsFastPath._answer

    async def spy(self, scope, receive, send, run_id):
        result = await original(self, scope, receive, send, run_id)
        record.append(result)
        return result

    monkeypatch.setattr(WarningsFastPath, "_answer", spy)
    return record


def _route_only(settings):
    app = create_app(settings)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not WarningsFastPath]
    return app


def _run_with_warnings(client, headers=None) -> str:
    """A run with two warnings: two loss-spike episodes."""
    rid = client.post("/v1/runs", json={"name": "polled", "detectors": ["loss_spike"]}, headers=headers).json()["id"]
    records = _loss_records(range(60)) + _loss_records(range(60, 65), spike_at=60) + _loss_records(range(65, 200))
    records += _loss_records(range(200, 205), spike_at=200)
    assert client.post(f"/v1/runs/{rid}/telemetry", json={"records": records}, headers=headers).json()["new_warnings"] == 2
    return rid


def _comparable(response) -> tuple:
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    body = response.content
    if response.headers.get("content-type") == "application/problem+json":
        document = response.json()
        assert document.pop("request_id") == response.headers["x-request-id"]
        body = json.dumps(document, sort_keys=True).encode()
        headers.pop("content-length")
    return response.status_code, headers, body


def test_lean_path_answers_exactly_as_the_route(settings, answered):
    with TestClient(create_app(settings)) as lean, TestClient(_route_only(settings)) as route:
        rid = _run_with_warnings(lean)
        url = f"/v1/runs/{rid}/warnings"
        first = route.get(url).json()
        assert [w["step"] for w in first["items"]] == [60, 200]
        one = route.get(url, params={"limit": 1}).json()
        assert [w["step"] for w in one["items"]] == [60]
        etag = route.get(url).headers["etag"]
        cases = [
            ({}, {}), ({"since": ""}, {}), ({"since": "0"}, {}), ({"since": one["cursor"]}, {}),
            ({"since": first["cursor"]}, {}), ({"since": "999"}, {}), ({"limit": "1"}, {}), ({"limit": "1000"}, {}),
            ({"wait": "0"}, {}), ({"limit": "1", "unrelated": "x"}, {}),
            ({}, {"If-None-Match": etag}), ({}, {"If-None-Match": '"w0-c0"'}), ({}, {"If-None-Match": f"W/{etag}"}),
            ({"since": one["cursor"]}, {"If-None-Match": etag}),
        ]
        for params, headers in cases:
            expected = _comparable(route.get(url, params=params, headers=headers))
            for _ in range(2):  # rendered for this cursor and limit, then from the cache
                del answered[:]
                got = lean.get(url, params=params, headers=headers)
                assert _comparable(got) == expected, (params, headers)
                assert answered == [True], (params, headers)
                assert got.headers["x-request-id"]

        # An unknown run: the route's 404 problem. What the route has to judge: passed on, answered as it answers.
        others = [
            ("/v1/runs/nope/warnings", {}, 404, True), ("/v1/runs/nope/warnings", {"since": "3"}, 404, True),
            (url, {"since": "abc"}, 400, False), (url, {"since": "-1"}, 400, False), (url, {"limit": "0"}, 422, False),
            (url, {"limit": "1001"}, 422, False), (url, {"limit": "abc"}, 422, False), (url, {"limit": "010"}, 200, False),
            (url, {"limit": ""}, 422, False), (url, {"wait": ""}, 422, False), (url, {"wait": "31"}, 422, False),
            (url, {"wait": "0.2"}, 200, False), (url, [("since", "0"), ("since", "1")], 200, False),
            ("/v1/runs/nope/warnings", {"since": "abc"}, 400, False), ("/v1/runs/nope/warnings", {"wait": "1"}, 404, False),
        ]
        for path, params, status, lean_answers in others:
            expected = _comparable(route.get(path, params=params))
            del answered[:]
            got = lean.get(path, params=params)
            assert got.status_code == status and _comparable(got) == expected, (path, params, got.text)
            assert answered == [lean_answers], (path, params)
        assert lean.get("/v1/runs/nope/warnings").headers["content-type"] == "application/problem+json"
        assert lean.head(url).status_code == route.head(url).status_code == 405
        assert lean.get(url + "/").status_code == route.get(url + "/").status_code


def test_lean_path_cursor_limit_etag_and_new_warnings(client, answered):
    rid = _run_with_warnings(client)
    url = f"/v1/runs/{rid}/warnings"
    del answered[:]
    page = client.get(url, params={"limit": 1})
    assert answered == [True] and [w["step"] for w in page.json()["items"]] == [60]
    rest = client.get(url, params={"since": page.json()["cursor"]})
    assert [w["step"] for w in rest.json()["items"]] == [200]
    caught_up = client.get(url, params={"since": rest.json()["cursor"]})
    assert caught_up.json() == {"items": [], "cursor": rest.json()["cursor"]}
    etag = caught_up.headers["etag"]
    assert etag != rest.headers["etag"]  # an ETag is for one cursor
    del answered[:]
    assert client.get(url, params={"since": rest.json()["cursor"]}, headers={"If-None-Match": etag}).status_code == 304
    assert answered == [True]
    client.post(f"/v1/runs/{rid}/telemetry", json={"records": _loss_records(range(205, 400)) + _loss_records(range(400, 405), spike_at=400)})
    newer = client.get(url, params={"since": rest.json()["cursor"]}, headers={"If-None-Match": etag})
    assert newer.status_code == 200 and [w["step"] for w in newer.json()["items"]] == [400]  # at once, not after the TTL
    assert newer.headers["etag"] != etag


def test_lean_path_request_id_and_metrics(client, answered):
    rid = _run_with_warnings(client)
    url = f"/v1/runs/{rid}/warnings"
    etag = client.get(url).headers["etag"]

    def counted() -> tuple[float, float]:  # metrics are per process and shared by the tests: compare differences
        lines = client.get("/metrics").text.splitlines()
        requests = [m for m in lines if m.startswith('weightscope_http_requests_total{method="GET",route="/v1/runs/{run_id}/warnings",status="304"}')]
        timed = [m for m in lines if m.startswith('weightscope_http_request_duration_seconds_count{method="GET",route="/v1/runs/{run_id}/warnings"}')]
        return float(requests[0].rsplit(" ", 1)[1]) if requests else 0.0, float(timed[0].rsplit(" ", 1)[1])

    before = counted()
    del answered[:]
    for _ in range(3):
        r = client.get(url, headers={"If-None-Match": etag, "X-Request-ID": "dash-1"})
        assert r.status_code == 304 and r.headers["x-request-id"] == "dash-1" and r.content == b""
    assert answered == [True, True, True]
    assert client.get(url, headers={"X-Request-ID": "not a valid id!"}).headers["x-request-id"] != "not a valid id!"
    after = counted()
    assert after[0] - before[0] == 3 and after[1] - before[1] == 4


def test_lean_path_auth(settings, answered):
    keyed = settings.model_copy(update={"api_keys": ["s3cret"]})
    with TestClient(create_app(keyed)) as client, TestClient(_route_only(keyed)) as route:
        auth = {"Authorization": "Bearer s3cret"}
        rid = _run_with_warnings(client, headers=auth)
        url = f"/v1/runs/{rid}/warnings"
        assert client.get(url, headers=auth).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer"},
                        {"Authorization": "bearer  wrong "}):
            for path, params in ((url, {}), ("/v1/runs/nope/warnings", {}), (url, {"limit": "0"})):  # auth comes first
                del answered[:]
                r = client.get(path, params=params, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
                assert r.headers["content-type"] == "application/problem+json" and r.json()["type"] == "/problems/unauthorized"
                assert _comparable(r) == _comparable(route.get(path, params=params, headers=headers))
                assert answered == [params == {}]
        del answered[:]
        assert client.get(url, headers={"Authorization": "bearer  s3cret "}).status_code == 200  # as HTTPBearer reads it
        assert answered == [True]

    with TestClient(create_app(settings)) as client:  # a key created in the database, then revoked
        rid = _run_with_warnings(client)
        url = f"/v1/runs/{rid}/warnings"
        services = client.app.state.services
        with services.writing() as session:
            row, secret = keys.create(session, "dashboards")
            session.flush()
            key_id = row.id
        client.app.state.keys._db_has_keys = (0.0, False)  # skip the 5 s cache
        assert client.get(url).status_code == 401
        auth = {"Authorization": f"Bearer {secret}"}
        client.get(url, headers=auth)
        del answered[:]
        assert client.get(url, headers=auth).status_code == 200 and answered == [True]
        with services.writing() as session:
            keys.revoke(session, key_id)
        client.app.state.keys._valid_until.clear()
        assert client.get(url, headers=auth).status_code == 401


def test_burst_of_polls_reads_and_renders_once(settings, client, monkeypatch):
    rid = _run_with_warnings(client)
    newest = client.get(f"/v1/runs/{rid}/warnings").json()["items"][-1]["seq"]
    services = Services.from_settings(settings)
    pages = run_service.WarningPages()
    reads, renders = [], []
    newest_warning = run_service.runs.newest_warning
    monkeypatch.setattr(run_service.runs, "newest_warning", lambda session, run_id: reads.append(run_id) or newest_warning(session, run_id))

    def render():
        renders.append(1)
        time.sleep(0.05)
        return b"page", newest, newest, True

    async def burst():
        latest = await asyncio.gather(*(pages.newest_async(services, rid) for _ in range(50)))
        bodies = await asyncio.gather(*(pages.page_async(rid, 0, 100, newest, render) for _ in range(50)))
        missing = await asyncio.gather(*(pages.newest_async(services, "nope") for _ in range(5)), return_exceptions=True)
        return latest, bodies, missing

    try:
        latest, bodies, missing = asyncio.run(burst())
    finally:
        services.close()
    assert latest == [newest] * 50 and reads == [rid, "nope"]
    assert bodies == [(b"page", newest)] * 50 and renders == [1] and pages.get(rid, 0, 100, newest) == (b"page", newest, True)
    assert all(getattr(e, "status", None) == 404 for e in missing)


def test_read_racing_an_ingest_is_not_kept(settings, client, monkeypatch):
    """A newest-seq read that started before a local ingest's forget() answers its waiters but is not cached."""
    rid = _run_with_warnings(client)
    newest = client.get(f"/v1/runs/{rid}/warnings").json()["items"][-1]["seq"]
    services = Services.from_settings(settings)
    pages = run_service.WarningPages()
    started, release = threading.Event(), threading.Event()
    newest_warning = run_service.runs.newest_warning

    def slow(session, run_id):
        started.set()
        release.wait(10)
        return newest_warning(session, run_id)

    monkeypatch.setattr(run_service.runs, "newest_warning", slow)

    async def race():
        read = asyncio.ensure_future(pages.newest_async(services, rid))
        while not started.is_set():
            await asyncio.sleep(0.01)
        pages.forget(rid)
        release.set()
        return await read

    try:
        assert asyncio.run(race()) == newest
    finally:
        services.close()
    assert pages.cached_newest(rid) is None


class _Connection:
    """One keep-alive HTTP connection (so one API process serves all its requests)."""

    def __init__(self, port: int):
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.http.connect()
        self.local = self.http.sock.getsockname()

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict, bytes]:
        headers = dict(headers or {})
        if body is not None:
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.http.request(method, path, body=body, headers=headers)
        response = self.http.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def json(self, method: str, path: str, body=None, headers=None):
        status, _, data = self.request(method, path, body, headers)
        assert status < 300, (status, data)
        return json.loads(data)


def _serving_process(server: psutil.Process, connection: _Connection) -> int:
    for child in server.children():
        try:
            if any(c.raddr and tuple(c.raddr) == connection.local for c in child.net_connections(kind="tcp")):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no API process holds this connection")


def _connections_per_process(server: psutil.Process, port: int, processes: int, each: int) -> dict[int, list[_Connection]]:
    found: dict[int, list[_Connection]] = {}
    for _ in range(200):  # the kernel spreads connections over the processes' sockets; keep `each` for every one
        connection = _Connection(port)
        connection.request("GET", "/healthz")
        held = found.setdefault(_serving_process(server, connection), [])
        if len(held) < each:
            held.append(connection)
        if len(found) == processes and all(len(c) == each for c in found.values()):
            return found
    raise AssertionError(f"connections reached {len(found)} of {processes} API processes")


def _wait_healthy(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            connection = _Connection(port)
            if connection.request("GET", "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not start")


@pytest.mark.slow
def test_server_with_two_api_processes(settings, tmp_path):
    """A real `weightscope-server serve --processes 2`: telemetry through one process, warnings polled and
    long-polled through the other, detection exact, metrics summed, jobs run, a dead API process replaced."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WEIGHTSCOPE_DATA_DIR": str(settings.data_dir),
           "WEIGHTSCOPE_DATABASE_URL": settings.db_url, "WEIGHTSCOPE_WORKERS": "1", "WEIGHTSCOPE_JOB_POLL_SECONDS": "0.2",
           "WEIGHTSCOPE_API_KEYS": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--processes", "2"], env=env,
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(port, proc)
        server = psutil.Process(proc.pid)
        (pid_a, (a, a_waiter)), (pid_b, (b, b_waiter)) = _connections_per_process(server, port, 2, each=2).items()
        polls = 0

        rid = a.json("POST", "/v1/runs", {"name": "two-processes", "detectors": ["loss_spike"]})["id"]
        records = _loss_records(range(60))
        for i in range(0, 60, 10):  # the processes take turns; each replays what the other stored
            (a if i % 20 == 0 else b).json("POST", f"/v1/runs/{rid}/telemetry", {"records": records[i : i + 10]})
        url = f"/v1/runs/{rid}/warnings"
        idle = b.request("GET", url)
        polls += 1
        assert idle[0] == 200 and json.loads(idle[2])["items"] == []
        etag = idle[1]["etag"]

        results: dict = {}

        def long_poll(name: str, connection: _Connection, headers: dict) -> None:
            started = time.monotonic()
            results[name] = connection.request("GET", url + "?wait=20", headers=headers), time.monotonic() - started

        # Long-polls waiting in both processes; the warning is stored by process A.
        waiters = [threading.Thread(target=long_poll, args=("b", b_waiter, {"If-None-Match": etag})),
                   threading.Thread(target=long_poll, args=("a", a_waiter, {}))]
        for t in waiters:
            t.start()
        time.sleep(1.0)
        posted = time.monotonic()
        assert a.json("POST", f"/v1/runs/{rid}/telemetry", {"records": _loss_records(range(60, 70), spike_at=60)})["new_warnings"] == 1
        for t in waiters:
            t.join(30)
        polls += 2
        for name in ("a", "b"):
            (status, _, body), _ = results[name]
            assert status == 200 and [w["step"] for w in json.loads(body)["items"]] == [60], name
        assert time.monotonic() - posted < 5  # woken (in B by its half-second database check), not by the timeout

        # Plain polls in B see the new warning within the newest-seq TTL (1 s); then 304 with the new ETag.
        deadline = time.monotonic() + 5
        while True:
            status, headers, body = b.request("GET", url, headers={"If-None-Match": etag})
            polls += 1
            if status == 200:
                break
            assert status == 304 and time.monotonic() < deadline
            time.sleep(0.1)
        assert [w["step"] for w in json.loads(body)["items"]] == [60]
        for connection in (a, b):
            assert connection.request("GET", url, headers={"If-None-Match": headers["etag"]})[0] == 304
            polls += 1
        assert [(w["detector"], w["step"]) for w in a.json("GET", url)["items"]] == [("loss_spike", 60)]
        polls += 1

        # Metrics are summed over both processes (each counts a request just after answering it: allow a moment).
        deadline = time.monotonic() + 5
        while True:
            metrics = a.request("GET", "/metrics")[2].decode()
            counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith('weightscope_http_requests_total{method="GET",route="/v1/runs/{run_id}/warnings"'))
            if counted == polls or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert counted == polls, metrics

        # Jobs submitted through an API process are run by the supervisor's worker.
        blob = safetensors.torch.save({"fc.weight": torch.randn(16, 8)})
        b.http.request("POST", "/v1/checkpoints?name=tiny", body=blob, headers={"Content-Type": "application/octet-stream"})
        response = b.http.getresponse()
        checkpoint = json.loads(response.read())
        assert response.status == 201, checkpoint
        job = b.json("POST", f"/v1/checkpoints/{checkpoint['id']}/analyses", {"kind": "weight_spectra"})
        deadline = time.monotonic() + 120
        while job["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
            job = a.json("GET", f"/v1/jobs/{job['id']}")
        assert job["status"] == "succeeded", job

        # An API process that dies is replaced; the server keeps answering.
        before = {c.pid for c in server.children()}
        os.kill(pid_b, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not {c.pid for c in server.children()} - before:
            assert time.monotonic() < deadline, "no replacement API process"
            time.sleep(0.2)
        _connections_per_process(server, port, 2, each=1)  # both processes answer again
        for _ in range(10):
            assert _Connection(port).request("GET", url)[0] == 200
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
        gone, alive = psutil.wait_procs(children, timeout=30)
        for leftover in alive:
            leftover.kill()
    assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
    assert not alive, "API or worker processes outlived the server"
