"""Server-side spectral alignment for runs without the hook: a probe batch per run, and checkpoints uploaded with
the run and a step get SA computed by a worker from the rebuilt network, fed to the run's detectors."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from hypothesis import given, settings as hsettings, strategies as st
from torch import nn
from weightscope import WeightscopeClient
from weightscope.monitor import SpectralMonitor
from weightscope.spectral import sa_summary

from app.jobs import alignment
from app.jobs.worker import Worker
from storage import runs as run_rows

from .helpers import safetensors_bytes


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))


def _direct_sign_diversity(weight: torch.Tensor, x: torch.Tensor, eps: float = 1e-3) -> float:
    v1 = torch.linalg.svd(weight.double())[2][0]
    sa = (x.double() @ v1) / x.double().norm(dim=1)
    counted = sa[sa.abs() >= eps]
    positive = int((counted > 0).sum())
    return 2 * min(positive, counted.numel() - positive) / counted.numel()


def test_probe_and_checkpoints_give_sa_telemetry(client):
    # names cannot tell the activation: the run's model description supplies it as an architecture hint
    run_id = client.post("/v1/runs", json={"name": "no-hook", "model": {"architecture": {"hints": {"activation": "tanh"}}}}).json()["id"]
    probe = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    r = client.put(f"/v1/runs/{run_id}/probe", content=safetensors.torch.save({"inputs": probe}))
    assert r.status_code == 200, r.text
    assert r.json()["inputs"] == {"dtype": "F32", "shape": [64, 16]}
    models = {}
    for step in (0, 10, 20):
        models[step] = _model(step)
        state = {k: v.detach().clone() for k, v in models[step].state_dict().items()}
        up = client.post("/v1/checkpoints", content=safetensors_bytes(state), params={"run": run_id, "step": step})
        assert up.status_code == 201
    worker = Worker(client.app.state.services)
    for _ in range(3):
        job_id = worker.run_once()
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["kind"] == "spectral_alignment" and job["status"] == "succeeded", job["error"]
        assert job["result"]["layers"] == ["0", "2"]
    assert worker.run_once() is None
    for layer, weight_of, input_of in (("0", lambda m: m[0].weight, lambda m: probe),
                                       ("2", lambda m: m[2].weight, lambda m: torch.tanh(m[0](probe)))):
        series = client.get(f"/v1/runs/{run_id}/series", params={"metric": "sa_sign_diversity", "layer": layer}).json()["points"]
        assert [p[0] for p in series] == [0, 10, 20]
        for step, value in series:
            with torch.no_grad():
                want = _direct_sign_diversity(weight_of(models[step]), input_of(models[step]))
            assert abs(value - want) < 1e-9, (layer, step, value, want)
        sigma = client.get(f"/v1/runs/{run_id}/series", params={"metric": "sigma1", "layer": layer}).json()["points"]
        with torch.no_grad():
            assert abs(sigma[0][1] - float(torch.linalg.matrix_norm(weight_of(models[0]).double(), ord=2))) < 1e-4


def test_probe_and_sa_bad_input(client, settings):
    assert client.put("/v1/runs/nope/probe", content=b"x").status_code == 404
    run_id = client.post("/v1/runs", json={"name": "r"}).json()["id"]
    r = client.put(f"/v1/runs/{run_id}/probe", content=safetensors.torch.save({"x": torch.ones(2)}))
    assert r.status_code == 422 and r.json()["type"] == "/problems/invalid-probe"
    assert client.put(f"/v1/runs/{run_id}/probe", content=b"junk junk junk").status_code in (415, 422)
    cid = client.post("/v1/checkpoints", content=safetensors_bytes(_model(0).state_dict()), params={"run": run_id}).json()["id"]
    r = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "spectral_alignment"})
    assert r.status_code == 422 and "no probe batch" in r.json()["detail"]
    client.put(f"/v1/runs/{run_id}/probe", content=safetensors.torch.save({"inputs": torch.randn(4, 16)}))
    r = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "spectral_alignment"})
    assert r.status_code == 422 and "needs a step" in r.json()["detail"]
    r = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "spectral_alignment", "params": {"step": 5}})
    assert r.status_code == 202 and r.json()["params"] == {"run": run_id, "step": 5, "max_tokens": 4096}


# --- convolutions and attention projections (issue 5) ------------------------------------------------------------
# The references below are computed from the original torch modules (forward pre-hooks for layer inputs), a full
# torch SVD of each weight, explicit F.unfold patches and an explicit per-head attention concat: no server code.

def _v1(weight: torch.Tensor) -> torch.Tensor:
    """Top right singular vector by full SVD, signed like top_singular's cold start (largest entry positive)."""
    v = torch.linalg.svd(weight.double())[2][0]
    return -v if v[v.abs().argmax()] < 0 else v


def _direct_sa(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    rows = rows.double()
    norms = rows.norm(dim=1)
    return torch.where(norms == 0, torch.zeros_like(norms), rows @ _v1(weight) / norms)


def _direct_metrics(weight: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
    metrics = sa_summary(_direct_sa(weight, rows))
    metrics.update(sigma1=float(torch.linalg.matrix_norm(weight.double(), ord=2)), weight_norm=float(weight.double().norm()))
    return metrics


def _stored(client, run_id: str) -> dict[tuple[int, str], dict[str, float]]:
    with client.app.state.services.sessions() as session:
        return {(r.step, r.layer): {k: float(v) for k, v in r.metrics.items()} for r in run_rows.telemetry(session, run_id)}


def _assert_metrics(got: dict, want: dict, atol: float, layer: str) -> None:
    assert set(got) == set(want), layer
    for name, value in want.items():
        tol = 1e-12 if name.startswith(("sa_hist", "sa_count", "sa_nonfinite", "sa_sign", "sa_pos")) else atol
        assert abs(got[name] - value) <= tol * max(1.0, abs(value)), (layer, name, got[name], value)


def _hooked_inputs(model: nn.Module, names: list[str], *inputs) -> dict[str, torch.Tensor]:
    seen, hooks = {}, []
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_pre_hook(
            lambda m, args, name=name: seen.setdefault(name, args[0].detach())))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _run_jobs(client, count: int) -> list[dict]:
    worker, jobs = Worker(client.app.state.services), []
    for _ in range(count):
        job = client.get(f"/v1/jobs/{worker.run_once()}").json()
        assert job["kind"] == "spectral_alignment" and job["status"] == "succeeded", job["error"]
        assert job["progress"] == 1.0
        jobs.append(job)
    assert worker.run_once() is None
    return jobs


def _monitor_layers(model: nn.Module) -> set[str]:
    monitor = SpectralMonitor(model, "r", client=WeightscopeClient("http://127.0.0.1:9"))
    try:
        return {t.name for t in monitor.taps}
    finally:
        monitor.close(timeout=0.1)


class _CNN(nn.Module):
    """Strided, dilated, "same"-padded (odd and even kernel) and bias-free convolutions, then a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.body = nn.Conv2d(6, 5, 3, padding="same", dilation=2, bias=False)
        self.tail = nn.Conv2d(5, 4, 2, padding="same")
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.tail(torch.relu(self.body(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


_CNN_DECLARATIVE = {
    "inputs": [{"name": "x", "kind": "image", "size": 3}],
    "ops": [{"name": "stem", "kind": "conv", "inputs": ["x"], "params": {"weight": "stem.weight", "bias": "stem.bias"},
             "attrs": {"stride": 2, "padding": 1}},
            {"name": "a1", "kind": "act", "inputs": ["stem"], "attrs": {"fn": "relu"}},
            {"name": "body", "kind": "conv", "inputs": ["a1"], "params": {"weight": "body.weight"},
             "attrs": {"padding": "same", "dilation": 2}},
            {"name": "a2", "kind": "act", "inputs": ["body"], "attrs": {"fn": "relu"}},
            {"name": "tail", "kind": "conv", "inputs": ["a2"], "params": {"weight": "tail.weight", "bias": "tail.bias"},
             "attrs": {"padding": "same"}},
            {"name": "a3", "kind": "act", "inputs": ["tail"], "attrs": {"fn": "relu"}},
            {"name": "pool", "kind": "adaptive_avgpool", "inputs": ["a3"]},
            {"name": "flat", "kind": "flatten", "inputs": ["pool"]},
            {"name": "head", "kind": "linear", "inputs": ["flat"], "params": {"weight": "head.weight", "bias": "head.bias"}}],
    "outputs": ["head"],
}


def test_convolutions_get_patch_sa_like_a_direct_unfold(client):
    torch.manual_seed(1)
    model = _CNN().eval()
    probe = torch.randn(5, 3, 11, 11, generator=torch.Generator().manual_seed(2))
    run_id = client.post("/v1/runs", json={"name": "cnn", "model": {"architecture": {"declarative": _CNN_DECLARATIVE}}}).json()["id"]
    assert client.put(f"/v1/runs/{run_id}/probe", content=safetensors.torch.save({"inputs": probe})).status_code == 200
    cid = client.post("/v1/checkpoints", content=safetensors_bytes(model.state_dict()), params={"run": run_id, "step": 3}).json()["id"]
    (job,) = _run_jobs(client, 1)
    assert job["result"]["layers"] == ["stem", "body", "tail", "head"] and job["result"]["skipped"] == []
    assert set(job["result"]["layers"]) == _monitor_layers(model), "the names the client monitor would send"

    x = _hooked_inputs(model, ["stem", "body", "tail", "head"], probe)
    rows = {  # explicit patches: (N, C*k*k, L) -> (N*L, C*k*k); "same" is 2 zeros each side (k=3, dilation 2),
        # and for the even kernel one zero after (torch's convention)
        "stem": F.unfold(x["stem"], 3, padding=1, stride=2),
        "body": F.unfold(x["body"], 3, dilation=2, padding=2),
        "tail": F.unfold(F.pad(x["tail"], (0, 1, 0, 1)), 2),
    }
    rows = {k: v.transpose(1, 2).reshape(-1, v.shape[1]) for k, v in rows.items()} | {"head": x["head"]}
    assert rows["stem"].shape == (5 * 36, 27) and rows["tail"].shape == (5 * 36, 20)
    stored = _stored(client, run_id)
    for layer, module in (("stem", model.stem), ("body", model.body), ("tail", model.tail), ("head", model.head)):
        weight = module.weight.detach().reshape(module.weight.shape[0], -1)
        _assert_metrics(stored[(3, layer)], _direct_metrics(weight, rows[layer]), 1e-6, layer)
    series = client.get(f"/v1/runs/{run_id}/series", params={"metric": "sa_sign_diversity", "layer": "body"}).json()
    assert series["points"] == [[3, stored[(3, "body")]["sa_sign_diversity"]]]

    # at most max_tokens patches per layer, drawn from that layer's patches
    r = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "spectral_alignment", "params": {"step": 4, "max_tokens": 50}})
    assert r.status_code == 202
    _run_jobs(client, 1)
    stored = _stored(client, run_id)
    for layer in ("stem", "body", "tail"):
        hist = [stored[(4, layer)][f"sa_hist_{i:02d}"] * 50 for i in range(10)]
        assert all(abs(h - round(h)) < 1e-9 for h in hist) and round(sum(hist)) == 50, (layer, hist)
        assert stored[(4, layer)]["sa_count"] <= 50
        weight = model.get_submodule(layer).weight.detach()
        full = _direct_sa(weight.reshape(weight.shape[0], -1), rows[layer])
        assert full.min() - 1e-9 <= stored[(4, layer)]["sa_q05"] and stored[(4, layer)]["sa_q95"] <= full.max() + 1e-9


class _Attention(nn.Module):
    """Token embedding, a bias-free nn.MultiheadAttention (packed in_proj), a residual and a read-out, in float64."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.attn = nn.MultiheadAttention(8, 2, bias=False, batch_first=True)
        self.head = nn.Linear(8, 11)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + self.attn(h, h, h, need_weights=False)[0])


_ATTENTION_DECLARATIVE = {
    "inputs": [{"name": "ids", "kind": "tokens"}],
    "ops": [{"name": "emb", "kind": "embedding", "inputs": ["ids"], "params": {"weight": "emb.weight"}},
            {"name": "attn", "kind": "attention", "inputs": ["emb"], "attrs": {"heads": 2},
             "params": {"qkv_weight": "attn.in_proj_weight", "o_weight": "attn.out_proj.weight"}},
            {"name": "res", "kind": "add", "inputs": ["attn", "emb"]},
            {"name": "head", "kind": "linear", "inputs": ["res"], "params": {"weight": "head.weight", "bias": "head.bias"}}],
    "outputs": ["head"],
}


def test_attention_projections_get_sa_like_an_explicit_head_concat(client):
    torch.manual_seed(4)
    model = _Attention().double().eval()
    ids = torch.randint(0, 11, (6, 5), generator=torch.Generator().manual_seed(5))
    run_id = client.post("/v1/runs", json={"name": "attn"}).json()["id"]
    client.put(f"/v1/runs/{run_id}/probe", content=safetensors.torch.save({"inputs": ids}))
    params = {"run": run_id, "step": 1, "architecture": json.dumps({"declarative": _ATTENTION_DECLARATIVE})}
    assert client.post("/v1/checkpoints", content=safetensors_bytes(model.state_dict()), params=params).status_code == 201
    (job,) = _run_jobs(client, 1)
    layers = ["attn.in_proj_q", "attn.in_proj_k", "attn.in_proj_v", "attn.out_proj", "head"]
    assert job["result"]["layers"] == layers
    # the monitor cannot see out_proj's input (it never leaves torch's attention function); the rest is named alike
    assert _monitor_layers(model) == set(layers) - {"attn.out_proj"}
    (skipped,) = job["result"]["skipped"]
    assert skipped["layer"] == "emb" and skipped["kind"] == "embedding" and "lookup table" in skipped["reason"]

    with torch.no_grad():
        h = model.emb(ids)
        w = model.attn.in_proj_weight.detach()
        q, k, v = (h @ w[8 * i:8 * (i + 1)].T for i in range(3))
        heads = []
        for i in range(2):  # explicit per-head attention, concatenated in head order
            s = slice(4 * i, 4 * (i + 1))
            heads.append(torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2.0, dim=-1) @ v[..., s])
        concat = torch.cat(heads, dim=-1)
        a = model.attn.out_proj(concat)
        torch.testing.assert_close(a, model.attn(h, h, h, need_weights=False)[0], atol=1e-12, rtol=0)
    want = {f"attn.in_proj_{r}": (w[8 * i:8 * (i + 1)], h.reshape(-1, 8)) for i, r in enumerate("qkv")}
    want["attn.out_proj"] = (model.attn.out_proj.weight.detach(), concat.reshape(-1, 8))
    want["head"] = (model.head.weight.detach(), (h + a).reshape(-1, 8))
    stored = _stored(client, run_id)
    for layer, (weight, rows) in want.items():
        _assert_metrics(stored[(1, layer)], _direct_metrics(weight, rows), 1e-9, layer)


def test_gpt2_packed_transposed_attention_and_skipped_tables(client):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(6)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=31, n_positions=12, n_embd=16, n_layer=1, n_head=4,
                                       bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, 31, (3, 9), generator=torch.Generator().manual_seed(7))
    run_id = client.post("/v1/runs", json={"name": "gpt2", "model": {"architecture": {"hints": {"num_heads": 4}}}}).json()["id"]
    client.put(f"/v1/runs/{run_id}/probe", content=safetensors.torch.save({"inputs": ids}))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the tied head shares memory
    assert client.post("/v1/checkpoints", content=safetensors_bytes(state), params={"run": run_id, "step": 2}).status_code == 201
    (job,) = _run_jobs(client, 1)
    layers = [f"transformer.h.0.{n}" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert job["result"]["layers"] == layers
    assert set(layers) == _monitor_layers(model)
    assert [(s["layer"], s["kind"]) for s in job["result"]["skipped"]] == [
        ("transformer.wte", "embedding"), ("transformer.wpe", "add_positions"), ("lm_head", "linear")]
    assert "tied" in job["result"]["skipped"][2]["reason"]
    x = _hooked_inputs(model, layers, ids)  # HF's own tensors: c_proj's input is its merged heads
    stored = _stored(client, run_id)
    for layer in layers:
        weight = model.get_submodule(layer).weight.detach().T  # Conv1D stores (in, out)
        _assert_metrics(stored[(2, layer)], _direct_metrics(weight, x[layer].reshape(-1, weight.shape[1])), 1e-5, layer)


def test_a_failing_layer_is_skipped_not_fatal(client, monkeypatch):
    run_id = client.post("/v1/runs", json={"name": "r", "model": {"architecture": {"hints": {"activation": "tanh"}}}}).json()["id"]
    client.put(f"/v1/runs/{run_id}/probe", content=safetensors.torch.save({"inputs": torch.randn(8, 16)}))
    real = alignment._measure_one

    def flaky(net, m, *args):
        if m.layer == "2":
            raise RuntimeError("boom")
        return real(net, m, *args)

    monkeypatch.setattr(alignment, "_measure_one", flaky)
    client.post("/v1/checkpoints", content=safetensors_bytes(_model(0).state_dict()), params={"run": run_id, "step": 0})
    (job,) = _run_jobs(client, 1)
    assert job["result"]["layers"] == ["0"]
    assert job["result"]["skipped"] == [{"layer": "2", "op": "2", "kind": "linear", "reason": "measurement failed: RuntimeError: boom"}]
    assert set(_stored(client, run_id)) == {(0, "0")}


def test_half_precision_checkpoint_runs_in_float32(client):
    """A bfloat16 checkpoint with a float32 probe: the rebuilt network and the probe meet in float32."""
    run_id = client.post("/v1/runs", json={"name": "bf16", "model": {"architecture": {"hints": {"activation": "tanh"}}}}).json()["id"]
    probe = torch.randn(32, 16, generator=torch.Generator().manual_seed(8))
    client.put(f"/v1/runs/{run_id}/probe", content=safetensors.torch.save({"inputs": probe}))
    state = {k: v.to(torch.bfloat16) for k, v in _model(1).state_dict().items()}
    client.post("/v1/checkpoints", content=safetensors_bytes(state), params={"run": run_id, "step": 0})
    (job,) = _run_jobs(client, 1)
    assert job["result"]["layers"] == ["0", "2"]
    stored = _stored(client, run_id)
    _assert_metrics(stored[(0, "0")], _direct_metrics(state["0.weight"].float(), probe), 1e-6, "0")
    hidden = torch.tanh(F.linear(probe, state["0.weight"].float(), state["0.bias"].float()))
    _assert_metrics(stored[(0, "2")], _direct_metrics(state["2.weight"].float(), hidden), 1e-5, "2")


# --- without the API: every family's layers against the original modules, and the pieces --------------------------

@pytest.mark.parametrize("name", ["cnn_bn", "resnet_blocks", "gpt2", "llama_gqa", "vit", "bert"])
def test_every_family_measures_what_hooks_on_the_original_see(name):
    from metanets import rebuild

    from .metanets.models import case, described

    c, desc = case(name), described(name)
    measured, skipped = alignment.measure(rebuild(desc, c.model.state_dict()), c.inputs, 10**9)
    # every weight matrix is measured or its op is listed as skipped
    matrices = {k for k, t in desc.tensors.items() if len(t.shape) >= 2 and not t.buffer and not t.tied_to}
    covered = {p for m in alignment.plan(desc)[0] for p in [m.op.params[m.role]]}
    skipped_ops = {s["op"] for s in skipped}
    assert {k for k in matrices - covered if desc.tensors[k].op not in skipped_ops} == set()
    x = _hooked_inputs(c.model, [m.layer for m in measured], *c.inputs)
    for m in measured:
        module = c.model.get_submodule(m.layer)  # layer names are the original module names
        if isinstance(module, nn.Conv2d):
            weight = module.weight.detach().reshape(module.weight.shape[0], -1)
            rows = F.unfold(x[m.layer], module.kernel_size, dilation=module.dilation, padding=module.padding,
                            stride=module.stride)
            rows = rows.transpose(1, 2).reshape(-1, weight.shape[1])
        else:
            weight = module.weight.detach().T if type(module).__name__ == "Conv1D" else module.weight.detach()
            rows = x[m.layer].reshape(-1, weight.shape[1])
        want = _direct_sa(weight, rows)
        assert m.sa.shape == want.shape, m.layer
        torch.testing.assert_close(m.sa.sort().values, want.sort().values, atol=1e-8, rtol=0, msg=m.layer)
        assert m.sigma1 == pytest.approx(float(torch.linalg.matrix_norm(weight.double(), ord=2)), abs=1e-9)


def test_sampling_keeps_a_subset_and_progress_rises():
    from metanets import rebuild

    from .metanets.models import case, described

    c = case("resnet_blocks")
    net = rebuild(described("resnet_blocks"), c.model.state_dict())
    full, _ = alignment.measure(net, c.inputs, 10**9)
    seen = []
    sampled, _ = alignment.measure(net, c.inputs, 40, progress=seen.append)
    assert seen == sorted(seen) and seen[0] == pytest.approx(0.2) and seen[-1] == pytest.approx(0.95)
    assert len(seen) == len(full) + 1
    for f, s in zip(full, sampled, strict=True):
        assert s.layer == f.layer and s.sa.numel() == min(40, f.sa.numel())
        assert all((f.sa - value).abs().min() < 1e-12 for value in s.sa), s.layer
    again, _ = alignment.measure(net, c.inputs, 40)
    assert all(torch.equal(a.sa, s.sa) for a, s in zip(again, sampled)), "the sample is deterministic"


def test_an_op_kind_without_a_rule_is_skipped():
    from .metanets.models import described

    desc = described("gpt2")
    desc = type(desc).from_json(desc.to_json())
    desc.ops[0].kind = "mystery_lookup"  # a future op kind holding a matrix
    matrices, skipped = alignment.plan(desc)
    assert skipped[0] == {"layer": "transformer.wte", "op": "wte", "kind": "mystery_lookup",
                          "reason": "no spectral-alignment rule for op kind 'mystery_lookup'"}
    assert {f"transformer.h.{i}.{n}" for i in (0, 1) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")} \
        <= {m.layer for m in matrices}, "the other ops are still measured"


@hsettings(max_examples=40, deadline=None)
@given(nd=st.integers(1, 3), channels=st.integers(1, 3), data=st.data())
def test_conv_patches_agree_with_the_convolution(nd, channels, data):
    """<patch, v> and |patch|^2 for every output position equal conv(x, v) and conv(x^2, 1) (zero padding included)."""
    kernel = [data.draw(st.integers(1, 3)) for _ in range(nd)]
    dilation = [data.draw(st.integers(1, 2)) for _ in range(nd)]
    same = data.draw(st.booleans())
    stride = [1] * nd if same else [data.draw(st.integers(1, 3)) for _ in range(nd)]
    padding = "same" if same else [data.draw(st.integers(0, 2)) for _ in range(nd)]
    size = [data.draw(st.integers(d * (k - 1) + 1, 7)) for k, d in zip(kernel, dilation)]
    x = torch.randn(2, channels, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(len(size)))
    v = torch.randn(channels * math.prod(kernel), dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    dots = conv(x, v.reshape(1, channels, *kernel), None, stride, padding, dilation).reshape(-1)
    sq = conv(x * x, torch.ones(1, channels, *kernel, dtype=torch.float64), None, stride, padding, dilation).reshape(-1)
    patches = torch.cat(list(alignment.conv_patches(x, kernel, stride, padding, dilation)))
    assert patches.shape == (dots.numel(), v.numel())
    torch.testing.assert_close(patches @ v, dots, atol=1e-10, rtol=0)
    torch.testing.assert_close((patches * patches).sum(1), sq, atol=1e-10, rtol=0)
    index = torch.arange(0, dots.numel(), 3)
    torch.testing.assert_close(torch.cat(list(alignment.conv_patches(x, kernel, stride, padding, dilation, index))),
                               patches[index], atol=0, rtol=0)
