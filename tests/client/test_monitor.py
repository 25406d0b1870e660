"""SpectralMonitor on a real small training loop: what it posts equals a direct full-SVD computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightscope import WeightscopeClient
from weightscope.monitor import SpectralMonitor
from weightscope.spectral import DEFAULT_QUANTILES, quantile_name

EVERY = 5
STEPS = 12


class Tiny(nn.Module):
    """Embedding, Conv1d, MultiheadAttention, an MLP and a tied unembedding: every kind of tap, one of each."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 32)
        self.out = nn.Linear(32, 16)
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        h = self.emb(tokens)
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = h + a
        h = h + self.out(torch.relu(self.fc(h)))
        return self.head(h)


def _direct_inputs(model: Tiny, tokens: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Independent reference: (weight matrix, input rows) of each monitored layer, via unfold and plain slicing."""
    with torch.no_grad():
        h = model.emb(tokens)
        xp = F.pad(h.transpose(1, 2), (1, 1))
        patches = xp.unfold(2, 3, 1).permute(0, 2, 1, 3).reshape(-1, 16 * 3)
        out = {"conv": (model.conv.weight.reshape(16, -1), patches)}
        h = h + model.conv(h.transpose(1, 2)).transpose(1, 2)
        w = model.attn.in_proj_weight
        for i, p in enumerate("qkv"):
            out[f"attn.in_proj_{p}"] = (w[16 * i:16 * (i + 1)], h.reshape(-1, 16))
        a, _ = model.attn(h, h, h, need_weights=False)
        h = h + a
        out["fc"] = (model.fc.weight, h.reshape(-1, 16))
        out["out"] = (model.out.weight, torch.relu(model.fc(h)).reshape(-1, 32))
    return {k: (w.detach().double().clone(), x.detach().double().clone()) for k, (w, x) in out.items()}


def _expected(w: torch.Tensor, x: torch.Tensor, eps: float = 1e-3) -> dict[str, object]:
    _, s, vh = torch.linalg.svd(w)
    sa = (x @ vh[0]) / x.norm(dim=1)
    counted = sa[sa.abs() >= eps]
    pos = int((counted > 0).sum())
    return {"sa": sa, "sd": 2 * min(pos, counted.numel() - pos) / counted.numel(), "sigma1": float(s[0]),
            "weight_norm": float(w.norm())}


@pytest.fixture(scope="module")
def trained(module_server):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    client = WeightscopeClient(module_server.url)
    monitor = SpectralMonitor(model, client.run("run-1"), every=EVERY, max_tokens=100_000, power_iters=3000,
                              power_tol=1e-13, poster_options={"flush_interval": 0.05})
    expected: dict[int, dict] = {}
    for step in range(STEPS):
        tokens = torch.randint(0, 20, (4, 10))
        if step % EVERY == 0:
            expected[step] = {k: _expected(w, x) for k, (w, x) in _direct_inputs(model, tokens).items()}
            with torch.no_grad():  # an evaluation forward on a monitored step must not be captured
                model.eval()
                model(torch.randint(0, 20, (4, 10)))
                model.train()
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, 20), tokens.reshape(-1))
        loss.backward()
        grad_norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
        expected.setdefault(step, {})["_step"] = {"loss": float(loss.detach()), "grad_norm": grad_norm}
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
    assert monitor.close(timeout=10)
    return monitor, expected, module_server.telemetry_records(), module_server


def test_layers_selected(trained):
    monitor, *_ = trained
    names = sorted(t.name for t in monitor.taps)
    # head is tied to the embedding and attn.out_proj's hooks never run, so neither is monitored
    assert names == ["attn.in_proj_k", "attn.in_proj_q", "attn.in_proj_v", "conv", "fc", "out"]


def test_records_match_direct_computation(trained):
    _, expected, records, server = trained
    assert all(r["path"] == "/v1/runs/run-1/telemetry" for r in server.requests)
    layer_records = {(r["step"], r["layer"]): r["metrics"] for r in records if r["layer"] != "_step"}
    monitored = [s for s in range(STEPS) if s % EVERY == 0]
    assert sorted({s for s, _ in layer_records}) == monitored
    for step in monitored:
        for layer, exp in expected[step].items():
            if layer == "_step":
                continue
            got = layer_records[(step, layer)]
            sa = exp["sa"]
            assert got["sa_count"] == int((sa.abs() >= 1e-3).sum())  # near-orthogonal tokens are not counted
            assert got["sa_sign_diversity"] == pytest.approx(exp["sd"], abs=1e-12)
            assert got["sa_abs_mean"] == pytest.approx(float(sa.abs().mean()), abs=1e-5)
            assert got["sigma1"] == pytest.approx(exp["sigma1"], rel=1e-6)
            assert got["weight_norm"] == pytest.approx(exp["weight_norm"], rel=1e-6)
            # v1's sign is arbitrary: the posted distribution is that of sa or of -sa
            posted = [got[quantile_name(q)] for q in DEFAULT_QUANTILES] + [got[f"sa_hist_{i:02d}"] for i in range(10)]
            options = []
            for sign in (1.0, -1.0):
                qs = [float(torch.quantile(sign * sa, q)) for q in DEFAULT_QUANTILES]
                options.append(qs + (torch.histc(sign * sa, bins=10, min=-1, max=1) / sa.numel()).tolist())
            assert any(posted == pytest.approx(opt, abs=1e-5) for opt in options), (step, layer)


def test_step_scalars_are_the_loop_values(trained):
    _, expected, records, _ = trained
    scalars = {r["step"]: r["metrics"] for r in records if r["layer"] == "_step"}
    assert sorted(scalars) == [s for s in range(STEPS) if s % EVERY == 0]
    for step, got in scalars.items():
        assert got["loss"] == pytest.approx(expected[step]["_step"]["loss"], rel=1e-6)
        assert got["grad_norm"] == pytest.approx(expected[step]["_step"]["grad_norm"], rel=1e-5)


def test_sign_kept_continuous_and_tokens_capped(fake_server):
    torch.manual_seed(1)
    layer = nn.Linear(8, 8)
    monitor = SpectralMonitor(layer, "r", client=WeightscopeClient(fake_server.url), every=1, max_tokens=50)
    previous = None
    for _ in range(6):
        layer(torch.randn(30, 8))
        layer(torch.randn(30, 8))  # two forwards in one step (gradient accumulation): 60 tokens, capped at 50
        tap = monitor.taps[0]
        assert tap.tokens == 50
        if previous is not None:
            assert float(torch.dot(tap.top.v, previous)) > 0
        monitor.step(1.0)
        previous = monitor.taps[0].prev_v
        with torch.no_grad():  # a sizeable update, but the singular vector must keep its orientation
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    assert monitor.close(timeout=10)
    counts = [r["metrics"]["sa_count"] for r in fake_server.telemetry_records() if r["layer"] != "_step"]
    assert len(counts) == 6 and all(c <= 50 for c in counts)


def test_output_space_uses_left_singular_vector(fake_server):
    torch.manual_seed(2)
    layer = nn.Linear(6, 5)
    monitor = SpectralMonitor(layer, "r", client=WeightscopeClient(fake_server.url), every=1, space="output",
                              power_iters=3000, power_tol=1e-13)
    x = torch.randn(40, 6)
    y = layer(x).detach().double()
    monitor.step()
    assert monitor.close(timeout=10)
    (rec,) = [r for r in fake_server.telemetry_records() if r["layer"] != "_step"]
    u1 = torch.linalg.svd(layer.weight.detach().double())[0][:, 0]
    sa = (y @ u1) / y.norm(dim=1)
    assert rec["metrics"]["sa_abs_mean"] == pytest.approx(float(sa.abs().mean()), abs=1e-5)


def test_non_finite_values_are_reported_not_raised(fake_server):
    layer = nn.Linear(4, 3)
    monitor = SpectralMonitor(layer, "r", client=WeightscopeClient(fake_server.url), every=1)
    x = torch.randn(10, 4)
    x[0, 0] = float("nan")
    loss = layer(x).sum()
    loss.backward()
    monitor.step(loss)
    with torch.no_grad():
        layer.weight.fill_(float("inf"))
    layer(torch.randn(5, 4))
    monitor.step(float("inf"))
    assert monitor.close(timeout=10)
    recs = {(r["step"], r["layer"]): r["metrics"] for r in fake_server.telemetry_records()}
    assert recs[(0, "")]["sa_nonfinite"] == 1 and recs[(0, "")]["sa_count"] <= 9
    assert recs[(0, "_step")]["loss"] == "NaN" and recs[(0, "_step")]["grad_norm"] == "NaN"
    assert recs[(1, "")]["weight_norm"] == "Infinity" and recs[(1, "_step")]["loss"] == "Infinity"


def _svd_sa(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    v1 = torch.linalg.svd(matrix.detach().double())[2][0]
    rows = rows.detach().double()
    return (rows @ v1) / rows.norm(dim=1)


def test_conv2d_with_stride_and_reflect_padding_matches_unfold(fake_server):
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, padding_mode="reflect")
    monitor = SpectralMonitor(conv, "r", client=WeightscopeClient(fake_server.url), every=1, max_tokens=10_000,
                              power_iters=3000, power_tol=1e-13)
    x = torch.randn(2, 3, 9, 9) + 0.3
    conv(x)
    monitor.step()
    assert monitor.close(timeout=10)
    (rec,) = [r["metrics"] for r in fake_server.telemetry_records() if r["layer"] != "_step"]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    patches = F.unfold(padded, 3, stride=2).transpose(1, 2).reshape(-1, 27)
    sa = _svd_sa(conv.weight.reshape(5, -1), patches)
    assert rec["sa_count"] == int((sa.abs() >= 1e-3).sum()) == 2 * 5 * 5
    assert rec["sa_abs_mean"] == pytest.approx(float(sa.abs().mean()), abs=1e-5)
    assert rec["sa_sign_diversity"] == pytest.approx(2 * min(float((sa > 0).float().mean()),
                                                             float((sa < 0).float().mean())))


def test_hugging_face_gpt2_conv1d_layers(fake_server):
    import transformers
    torch.manual_seed(5)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).train()
    monitor = SpectralMonitor(model, "r", client=WeightscopeClient(fake_server.url), every=1, max_tokens=10_000,
                              power_iters=3000, power_tol=1e-13)
    assert sorted(t.name for t in monitor.taps) == sorted(
        f"transformer.h.0.{n}" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))  # lm_head is tied
    seen = {}
    hook = model.transformer.h[0].attn.c_attn.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    model(torch.randint(0, 50, (2, 8)))
    hook.remove()
    monitor.step()
    assert monitor.close(timeout=10)
    recs = {r["layer"]: r["metrics"] for r in fake_server.telemetry_records()}
    c_attn = model.transformer.h[0].attn.c_attn
    sa = _svd_sa(c_attn.weight.T, seen["x"].reshape(-1, 16))  # HF Conv1D stores its weight as (in, out)
    got = recs["transformer.h.0.attn.c_attn"]
    assert got["sa_abs_mean"] == pytest.approx(float(sa.abs().mean()), abs=1e-5)
    assert got["sigma1"] == pytest.approx(float(torch.linalg.svdvals(c_attn.weight.detach().double())[0]), rel=1e-6)
