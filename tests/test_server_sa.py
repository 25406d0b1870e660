"""Server-side spectral alignment for runs without the hook: a probe batch per run, and checkpoints uploaded with
the run and a step get SA computed by a worker from the rebuilt network, fed to the run's detectors."""

from __future__ import annotations

import safetensors.torch
import torch
from torch import nn

from app.jobs.worker import Worker

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
