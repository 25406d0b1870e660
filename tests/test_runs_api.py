"""Runs, telemetry and warnings: idempotent ingestion, detection without repeats, ETag polling, long-poll and
server-sent events over real HTTP, downsampled series, and detection that stays exact across API processes."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
from fastapi.testclient import TestClient

from app.main import create_app


def _loss_records(steps, spike_at=None, value=1.0):
    rng = random.Random(0)
    out = []
    for step in steps:
        loss = 50.0 if spike_at is not None and step >= spike_at else value + rng.uniform(-0.01, 0.01)
        out.append({"step": step, "layer": "_step", "metrics": {"loss": loss, "grad_norm": 1.0 + rng.uniform(-0.05, 0.05)}})
    return out


def _run(client, **body) -> str:
    r = client.post("/v1/runs", json={"name": "gpt-small", **body})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/runs/{r.json()['id']}"
    return r.json()["id"]


def test_create_and_read_runs(client):
    rid = _run(client, model={"layers": 4}, detectors={"loss_spike": {"window": 20}})
    run = client.get(f"/v1/runs/{rid}").json()
    assert run["detectors"] == {"loss_spike": {"window": 20}} and run["model"] == {"layers": 4}
    everything = client.get(f"/v1/runs/{_run(client)}").json()["detectors"]
    assert set(everything) == {"sa_collapse", "grad_norm_spike", "loss_spike", "weight_norm_growth"}
    assert [r["id"] for r in client.get("/v1/runs").json()["items"]][1] == rid
    bad = client.post("/v1/runs", json={"name": "x", "detectors": {"astrology": None}})
    assert bad.status_code == 422 and "astrology" in bad.json()["detail"]
    bad = client.post("/v1/runs", json={"name": "x", "detectors": {"loss_spike": {"window": "wide"}}})
    assert bad.status_code == 422
    assert client.get("/v1/runs/nope").status_code == 404


def test_telemetry_is_idempotent_out_of_order_and_keeps_nonfinite(client):
    rid = _run(client, detectors=["loss_spike"])
    records = _loss_records(range(30))
    random.Random(1).shuffle(records)
    for _ in range(2):  # a retried batch changes nothing
        r = client.post(f"/v1/runs/{rid}/telemetry", json={"records": records})
        assert r.status_code == 200 and r.json()["stored"] == 30
    client.post(f"/v1/runs/{rid}/telemetry", json={"records": [{"step": 5, "layer": "_step", "metrics": {"loss": 2.5}}]})
    client.post(f"/v1/runs/{rid}/telemetry", json={"records": [{"step": 30, "layer": "_step", "metrics": {"loss": "NaN"}},
                                                                 {"step": 31, "layer": "_step", "metrics": {"loss": "Infinity"}}]})
    series = client.get(f"/v1/runs/{rid}/series", params={"metric": "loss"}).json()["points"]
    assert [p[0] for p in series] == list(range(32))
    assert series[5] == [5, 2.5] and series[30] == [30, "NaN"] and series[31] == [31, "Infinity"]
    assert client.get(f"/v1/runs/{rid}").json()["last_step"] == 31
    critical = [w for w in client.get(f"/v1/runs/{rid}/warnings").json()["items"] if w["severity"] == "critical"]
    assert critical and critical[0]["step"] == 30 and critical[0]["values"]["loss"] == "NaN"


def test_records_for_one_step_merge_by_metric(client):
    """A step's loss and gradient norm may come in separate records, even in one batch: both are kept."""
    rid = _run(client, detectors=["loss_spike"])
    batch = [{"step": 3, "layer": "_step", "metrics": {"loss": 1.5}}, {"step": 3, "layer": "_step", "metrics": {"grad_norm": 0.7}}]
    assert client.post(f"/v1/runs/{rid}/telemetry", json={"records": batch}).status_code == 200
    client.post(f"/v1/runs/{rid}/telemetry", json={"records": [{"step": 3, "layer": "_step", "metrics": {"loss": 1.25, "lr": 0.1}}]})
    for metric, value in (("loss", 1.25), ("grad_norm", 0.7), ("lr", 0.1)):
        assert client.get(f"/v1/runs/{rid}/series", params={"metric": metric}).json()["points"] == [[3, value]]


def test_bad_telemetry(client):
    rid = _run(client)
    r = client.post(f"/v1/runs/{rid}/telemetry", json={"records": [{"step": -1, "layer": "a", "metrics": {}}]})
    assert r.status_code == 422 and "body.records.0.step" in r.json()["detail"]
    r = client.post(f"/v1/runs/{rid}/telemetry", json={"records": [{"step": 1, "layer": "a", "metrics": {"x": "lots"}}]})
    assert r.status_code == 422 and "body.records.0.metrics.x" in r.json()["detail"]
    r = client.post(f"/v1/runs/{rid}/telemetry", json={"records": [{"step": 1, "layer": "a", "metrics": {}, "extra": 1}]})
    assert r.status_code == 422 and "extra" in r.json()["detail"]
    assert client.post("/v1/runs/nope/telemetry", json={"records": []}).status_code == 404
    big = {"records": [{"step": i, "layer": "layer" * 20, "metrics": {f"m{j}": 0.5 for j in range(80)}} for i in range(12_000)]}  # about 12 MB
    r = client.post(f"/v1/runs/{rid}/telemetry", content=json.dumps(big), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert client.get(f"/v1/runs/{rid}/series", params={"metric": "m0", "layer": "layer" * 20}).json()["points"] == []


def test_spike_warns_once_per_episode_and_polls_with_etag(client):
    rid = _run(client, detectors=["loss_spike"])
    client.post(f"/v1/runs/{rid}/telemetry", json={"records": _loss_records(range(60))})
    first = client.get(f"/v1/runs/{rid}/warnings")
    assert first.status_code == 200 and first.json()["items"] == []
    etag = first.headers["etag"]
    assert client.get(f"/v1/runs/{rid}/warnings", headers={"If-None-Match": etag}).status_code == 304
    client.post(f"/v1/runs/{rid}/telemetry", json={"records": _loss_records(range(60, 70), spike_at=60)})
    page = client.get(f"/v1/runs/{rid}/warnings", headers={"If-None-Match": etag})
    assert page.status_code == 200 and page.headers["etag"] != etag
    items = page.json()["items"]
    assert len(items) == 1, items  # ten spiking steps, one episode, one warning
    warning = items[0]
    assert warning["detector"] == "loss_spike" and warning["step"] == 60 and warning["values"]["loss"] == 50.0
    assert set(warning) >= {"id", "step", "layers", "detector", "severity", "message", "values"}
    assert client.get(f"/v1/runs/{rid}/warnings", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    after = client.get(f"/v1/runs/{rid}/warnings", params={"since": page.json()["cursor"]})
    assert after.json()["items"] == [] and after.json()["cursor"] == page.json()["cursor"]
    assert client.get(f"/v1/runs/{rid}/warnings", params={"since": "abc"}).status_code == 400


def test_series_downsampling_keeps_spikes(client):
    rid = _run(client, detectors=["loss_spike"])
    records = _loss_records(range(5000))
    records[3217]["metrics"]["loss"] = 99.0
    client.post(f"/v1/runs/{rid}/telemetry", json={"records": records})
    points = client.get(f"/v1/runs/{rid}/series", params={"metric": "loss", "max_points": 100}).json()["points"]
    assert len(points) <= 100 and [3217, 99.0] in points
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    recent = client.get(f"/v1/runs/{rid}/series", params={"metric": "loss", "since_step": 4990}).json()["points"]
    assert [p[0] for p in recent] == list(range(4990, 5000))


def test_detection_stays_exact_across_api_processes(settings):
    """Two app instances (as two server processes) take turns; each replays what the other stored."""
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        rid = _run(a, detectors=["loss_spike"])
        records = _loss_records(range(70), spike_at=60)
        for i in range(0, 70, 5):
            (a if i % 10 == 0 else b).post(f"/v1/runs/{rid}/telemetry", json={"records": records[i : i + 5]})
        items = b.get(f"/v1/runs/{rid}/warnings").json()["items"]
        assert [(w["detector"], w["step"]) for w in items] == [("loss_spike", 60)]


def test_long_poll_and_server_sent_events(live_server):
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        rid = c.post("/v1/runs", json={"name": "live", "detectors": ["loss_spike"]}).json()["id"]
        c.post(f"/v1/runs/{rid}/telemetry", json={"records": _loss_records(range(60))})
        start = time.monotonic()
        idle = c.get(f"/v1/runs/{rid}/warnings", params={"wait": 1})
        assert idle.json()["items"] == [] and 0.9 < time.monotonic() - start < 5
        assert c.get(f"/v1/runs/{rid}/warnings", params={"wait": 1}, headers={"If-None-Match": idle.headers["etag"]}).status_code == 304

        events: list[str] = []
        connected = threading.Event()

        def listen():
            with httpx.Client(base_url=live_server.url, timeout=30) as sse:
                with sse.stream("GET", f"/v1/runs/{rid}/warnings/stream") as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    for line in stream.iter_lines():
                        connected.set()
                        events.append(line)
                        if line.startswith("data:"):
                            return

        listener = threading.Thread(target=listen)
        listener.start()
        assert connected.wait(10)
        result: dict = {}
        poller = threading.Thread(target=lambda: result.update(r=c.get(f"/v1/runs/{rid}/warnings", params={"wait": 20})))
        etag_poller = threading.Thread(target=lambda: result.update(e=c.get(
            f"/v1/runs/{rid}/warnings", params={"wait": 20}, headers={"If-None-Match": idle.headers["etag"]})))
        etag_poller.start()
        poller.start()
        time.sleep(0.5)
        posted_at = time.monotonic()
        with httpx.Client(base_url=live_server.url, timeout=30) as writer:
            writer.post(f"/v1/runs/{rid}/telemetry", json={"records": _loss_records(range(60, 65), spike_at=60)})
        poller.join(25)
        etag_poller.join(25)
        listener.join(25)
        assert time.monotonic() - posted_at < 5  # woken by the warning, not by the 20 s timeout
        assert [w["step"] for w in result["r"].json()["items"]] == [60]
        assert result["e"].status_code == 200 and [w["step"] for w in result["e"].json()["items"]] == [60]
        ids = [line for line in events if line.startswith("id:")]
        data = json.loads(next(line for line in events if line.startswith("data:"))[5:])
        assert data["detector"] == "loss_spike" and data["step"] == 60 and ids == [f"id: {data['seq']}"]
        resumed = c.get(f"/v1/runs/{rid}/warnings", params={"since": str(data["seq"])}).json()
        assert resumed["items"] == []
