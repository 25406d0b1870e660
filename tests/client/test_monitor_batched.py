"""SpectralMonitor's batched path: one Lanczos run and one summary per monitored step, nothing on other steps, and
records equal to a layer-by-layer computation with the reference functions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import weightscope.monitor as monitor_module
from weightscope import WeightscopeClient
from weightscope.monitor import SpectralMonitor
from weightscope.spectral import alignment, sa_summary


class Block(nn.Module):
    """Two layers of each of two shapes (so that the batch mixes stacked and lone matrices) and a conv."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Linear(12, 12), nn.Linear(12, 12)
        self.up = nn.Linear(12, 20)
        self.down = nn.Linear(20, 12)
        self.conv = nn.Conv1d(12, 12, 3, padding=1)

    def forward(self, x):
        x = x + self.a2(torch.tanh(self.a1(x)))
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        return x + self.down(F.gelu(self.up(x)))


def _counting(monkeypatch, name):
    calls = []
    original = getattr(monitor_module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(monitor_module, name, counted)
    return calls


def test_one_batched_run_per_monitored_step_and_nothing_on_others(fake_server, monkeypatch):
    lanczos = _counting(monkeypatch, "top_singular_batch")
    cosines = _counting(monkeypatch, "_cosines")
    summaries = _counting(monkeypatch, "sa_summary_table")
    torch.manual_seed(0)
    model = Block()
    monitor = SpectralMonitor(model, "r", client=WeightscopeClient(fake_server.url), every=3)
    for step in range(7):
        before = (len(lanczos), len(cosines), len(summaries))
        for _ in range(2):  # two micro-batches: still one Lanczos run
            model(torch.randn(2, 5, 12)).sum().backward()
        monitor.step()
        after = (len(lanczos), len(cosines), len(summaries))
        if step % 3 == 0:
            assert after[0] - before[0] == 1 and after[2] - before[2] == 1
            assert after[1] - before[1] == 2 * 4  # the four linear layers, twice; the conv has its own path
        else:
            assert after == before
    assert monitor.close(timeout=10)


def test_records_equal_a_layer_by_layer_computation(fake_server):
    """Same v as the monitor (sign included), then the pre-batching functions: alignment and sa_summary per layer."""
    torch.manual_seed(1)
    model = Block()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = SpectralMonitor(model, "r", client=WeightscopeClient(fake_server.url), every=2)
    captured: dict[int, dict[str, torch.Tensor]] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: captured.setdefault(
        monitor._step, {}).__setitem__(name, args[0].detach().clone())) for name, m in model.named_modules() if name]
    expected: dict[tuple[int, str], dict[str, float]] = {}
    for step in range(5):
        model(torch.randn(3, 6, 12) + 0.2).pow(2).mean().backward()
        if step % 2 == 0:
            for tap in monitor.taps:
                x = captured[step][tap.name]
                if tap.kind == "conv":
                    patches = F.unfold(F.pad(x, (1, 1)).unsqueeze(2), (1, 3)).transpose(1, 2).reshape(-1, 36)
                    sa = alignment(patches.double(), tap.top.v.double())
                else:
                    sa = alignment(x.reshape(-1, x.shape[-1]).float(), tap.top.v.float())
                metrics = sa_summary(sa)
                metrics["sigma1"] = tap.top.sigma
                metrics["weight_norm"] = float(tap.matrix().detach().norm())
                expected[(step, tap.name)] = metrics
        monitor.step()
        opt.step()
        opt.zero_grad()
    for h in handles:
        h.remove()
    assert monitor.close(timeout=10)
    got = {(r["step"], r["layer"]): r["metrics"] for r in fake_server.telemetry_records() if r["layer"] != "_step"}
    assert got.keys() == expected.keys()
    for key, metrics in expected.items():
        for name, value in metrics.items():
            assert got[key][name] == pytest.approx(value, abs=1e-5 if name.startswith("sa_") else 0, rel=1e-6), (
                key, name)


def test_grad_norm_over_mixed_dtypes(fake_server):
    model = nn.Sequential(nn.Linear(4, 4).double(), nn.Linear(4, 4).to(torch.bfloat16), nn.Linear(4, 3))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    monitor = SpectralMonitor(model, "r", client=WeightscopeClient(fake_server.url), every=1)
    expected = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
    assert monitor.grad_norm() == pytest.approx(expected, rel=1e-6)
    model[2].weight.grad[0, 0] = math.inf
    assert monitor.grad_norm() == math.inf
    assert monitor.close(timeout=10)


def test_float64_and_bfloat16_models(fake_server):
    for dtype in (torch.float64, torch.bfloat16):
        torch.manual_seed(2)
        layer = nn.Linear(10, 7).to(dtype)
        fake_server.requests.clear()
        monitor = SpectralMonitor(layer, "r", client=WeightscopeClient(fake_server.url), every=1)
        x = torch.randn(50, 10, dtype=dtype)
        layer(x).float().sum().backward()
        monitor.step()
        assert monitor.close(timeout=10)
        (rec,) = [r["metrics"] for r in fake_server.telemetry_records() if r["layer"] != "_step"]
        w = layer.weight.detach().double()
        assert rec["sigma1"] == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-4)
        assert rec["weight_norm"] == pytest.approx(float(w.norm()), rel=1e-6)
        assert rec["sa_count"] + rec["sa_nonfinite"] <= 50
