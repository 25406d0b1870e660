"""The client package against the real server over HTTP: uploads, analyses, runs, and a SpectralMonitor on a
real training loop whose telemetry the server stores and judges."""

from __future__ import annotations

import math

import torch
from torch import nn
from weightscope import SpectralMonitor, WeightscopeClient, WeightscopeError

from app.jobs.worker import Worker


def test_checkpoints_and_jobs_through_the_client(live_server):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with WeightscopeClient(live_server.url) as client:
        info = client.upload_checkpoint(model.state_dict(), name="mlp", run="r1", step=5, tags=["a"])
        assert info["format"] == "safetensors" and info["tensor_count"] == 4 and info["tags"] == ["a"]
        assert [c["id"] for c in client.iter_checkpoints(run="r1")] == [info["id"]]
        tensors = client.get_checkpoint_tensors(info["id"])
        items = tensors["items"] if isinstance(tensors, dict) else tensors
        assert {t["name"] for t in items} == set(model.state_dict())
        job = client.submit_analysis(info["id"], "weight_spectra")
        assert Worker(live_server.app.state.services).run_once() == job["id"]
        done = client.wait_job(job["id"], timeout=30, poll=0.1)
        assert done["status"] == "succeeded" and len(done["result"]["layers"]) == 2
        try:
            client.get_checkpoint("missing")
        except WeightscopeError as exc:
            assert exc.status == 404 and exc.problem["type"] == "/problems/not-found"
        else:
            raise AssertionError("a missing checkpoint must raise")


def test_spectral_monitor_telemetry_reaches_the_server(live_server):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with WeightscopeClient(live_server.url) as client:
        run = client.start_run("monitored", model={"kind": "mlp"}, detectors=["loss_spike"])
        monitor = SpectralMonitor(model, run, every=2)
        for step in range(12):
            x = torch.randn(64, 16)
            loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
            loss.backward()
            monitor.step(loss)
            opt.step()
            opt.zero_grad()
        monitor.close(timeout=30)
        layers = {"0", "2"}
        for layer in layers:
            series = client.get_series(run.id, "sa_sign_diversity", layer=layer)
            assert [p[0] for p in series] == [0, 2, 4, 6, 8, 10]
            assert all(0.0 <= p[1] <= 1.0 for p in series)
        losses = client.get_series(run.id, "loss")
        assert len(losses) >= 6 and all(math.isfinite(p[1]) for p in losses)
        page = client.get_warnings(run.id)
        again = client.get_warnings(run.id, etag=page.etag)
        assert again.not_modified and again.items == []

