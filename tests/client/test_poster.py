"""The background poster: batching, and training that survives a dead or slow server."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from weightscope import TelemetryPoster, WeightscopeClient
from weightscope.client import telemetry_record
from weightscope.monitor import SpectralMonitor


def _records(n, start=0):
    return [telemetry_record(s, "l", {"v": float(s)}) for s in range(start, start + n)]


def test_batches_in_order_and_flush(fake_server):
    poster = TelemetryPoster(WeightscopeClient(fake_server.url), "r", batch_size=10, flush_interval=60)
    poster.enqueue(_records(25))
    assert poster.flush(timeout=5)
    posted = fake_server.telemetry_records()
    assert [r["step"] for r in posted] == list(range(25))
    sizes = [len(__import__("json").loads(r["body"])["records"]) for r in fake_server.requests]
    assert sizes == [10, 10, 5]
    assert poster.close(timeout=5) and poster.sent == 25


def test_training_survives_a_dead_server(closed_port_url, caplog):
    caplog.set_level(logging.WARNING, logger="weightscope")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = SpectralMonitor(model, "r", client=WeightscopeClient(closed_port_url), every=1,
                              poster_options={"max_buffer": 20, "batch_size": 5, "flush_interval": 0.01,
                                              "backoff_initial": 0.01, "backoff_max": 0.05})
    t0 = time.monotonic()
    for _ in range(30):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        loss.backward()
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
    elapsed = time.monotonic() - t0
    assert not monitor.close(timeout=0.3)  # could not deliver, did not raise
    assert monitor.poster.failures >= 1 and monitor.poster.dropped > 0 and monitor.poster.sent == 0
    assert monitor.poster.pending <= 20  # bounded buffer
    assert elapsed < 5
    messages = [r.getMessage() for r in caplog.records if r.name == "weightscope"]
    assert any("posting telemetry failed" in m for m in messages)
    assert sum("posting telemetry failed" in m for m in messages) == 1  # warned once, not per retry


def test_slow_server_does_not_block_and_recovery_delivers_everything(fake_server):
    fake_server.delay = 0.5
    poster = TelemetryPoster(WeightscopeClient(fake_server.url), "r", batch_size=4, flush_interval=0.01)
    t0 = time.monotonic()
    for i in range(5):
        poster.enqueue(_records(4, start=4 * i))
    assert time.monotonic() - t0 < 0.1  # enqueue never waits for the network
    fake_server.delay = 0.0
    assert poster.flush(timeout=10)
    assert sorted(r["step"] for r in fake_server.telemetry_records()) == list(range(20))
    poster.close(timeout=2)


def test_rejected_batches_are_dropped_not_retried(fake_server):
    fake_server.routes[("POST", "/v1/runs/r/telemetry")] = lambda req: (
        422, {"Content-Type": "application/problem+json"}, {"title": "Unprocessable", "status": 422})
    poster = TelemetryPoster(WeightscopeClient(fake_server.url), "r", batch_size=3, flush_interval=0.01)
    poster.enqueue(_records(3))
    assert poster.flush(timeout=5)
    assert poster.rejected == 3 and len(fake_server.requests) == 1
    poster.close(timeout=2)


def test_server_restart_resends_after_failure(closed_port_url, fake_server):
    client = WeightscopeClient(closed_port_url)
    poster = TelemetryPoster(client, "r", batch_size=5, flush_interval=0.01, backoff_initial=0.01, backoff_max=0.02)
    poster.enqueue(_records(5))
    deadline = time.monotonic() + 5
    while poster.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert poster.failures >= 1
    poster.client = WeightscopeClient(fake_server.url)  # the server is back (at another address here)
    assert poster.flush(timeout=5)
    assert [r["step"] for r in fake_server.telemetry_records()] == list(range(5))
    poster.close(timeout=2)


def test_backoff_is_not_cut_short_by_new_records(closed_port_url):
    poster = TelemetryPoster(WeightscopeClient(closed_port_url), "r", batch_size=1, flush_interval=0.01,
                             backoff_initial=0.5, backoff_max=0.5)
    for i in range(40):
        poster.enqueue(_records(1, start=i))
        time.sleep(0.01)
    assert 1 <= poster.failures <= 2  # ~0.4 s of enqueues inside a 0.5 s backoff: one attempt, maybe two
    poster.close(timeout=0.1)
