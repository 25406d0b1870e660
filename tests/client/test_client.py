"""HTTP client against a recording loopback server, and the import contract of the weightscope package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load as load_safetensors

from weightscope import WeightscopeClient, WeightscopeError
from weightscope.client import state_dict_to_safetensors, telemetry_record


def test_import_needs_no_torch_or_server_dependencies():
    code = ("import sys, weightscope; "
            "print(sorted(m for m in ('torch', 'fastapi', 'sqlalchemy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_safetensors_conversion_round_trips_with_the_reference_reader():
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "h": torch.randn(2, 2).to(torch.bfloat16),
          "t": torch.randn(4, 4).T, "e": torch.zeros(0, 3)}
    loaded = load_safetensors(state_dict_to_safetensors(sd))
    assert sorted(loaded) == sorted(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)


def test_upload_sends_safetensors_with_query_and_bearer(fake_server):
    fake_server.routes[("POST", "/v1/checkpoints")] = lambda req: (201, {}, {"id": "c1", "size": len(req["body"])})
    client = WeightscopeClient(fake_server.url, api_key="k3y")
    model = torch.nn.Linear(3, 2)
    info = client.upload_checkpoint(model, name="m", run="r1", step=7, tags=["a", "b"])
    req = fake_server.requests[-1]
    assert info == {"id": "c1", "size": len(req["body"])}
    assert req["headers"]["Authorization"] == "Bearer k3y"
    assert req["headers"]["Content-Type"] == "application/octet-stream"
    assert req["query"] == {"name": ["m"], "run": ["r1"], "step": ["7"], "tags": ["a,b"]}
    loaded = load_safetensors(req["body"])
    assert torch.equal(loaded["weight"], model.weight.detach())


def test_upload_from_a_file_streams_it_with_its_length(fake_server, tmp_path):
    fake_server.routes[("POST", "/v1/checkpoints")] = lambda req: (201, {}, {"id": "c2"})
    path = tmp_path / "m.safetensors"
    path.write_bytes(state_dict_to_safetensors({"w": torch.randn(64, 64)}))
    assert WeightscopeClient(fake_server.url).upload_checkpoint(path, name="m")["id"] == "c2"
    req = fake_server.requests[-1]
    assert req["headers"]["Content-Length"] == str(path.stat().st_size)
    assert req["body"] == path.read_bytes()


def test_problem_details_become_errors(fake_server):
    client = WeightscopeClient(fake_server.url)
    with pytest.raises(WeightscopeError) as info:
        client.get_checkpoint("missing")
    assert info.value.status == 404
    assert info.value.problem["title"] == "Not Found"


def test_iter_checkpoints_follows_page_tokens(fake_server):
    pages = {None: {"items": [{"id": 1}, {"id": 2}], "next_page_token": "t2"},
             "t2": {"items": [{"id": 3}], "next_page_token": None}}
    fake_server.routes[("GET", "/v1/checkpoints")] = \
        lambda req: (200, {}, pages[req["query"].get("page_token", [None])[0]])
    client = WeightscopeClient(fake_server.url)
    assert [c["id"] for c in client.iter_checkpoints(run="r", page_size=2)] == [1, 2, 3]
    assert fake_server.requests[0]["query"] == {"run": ["r"], "page_size": ["2"]}


def test_warnings_etag_and_not_modified(fake_server):
    def warnings(req):
        if req["headers"].get("If-None-Match") == '"v1"':
            return 304, {"ETag": '"v1"'}, None
        return 200, {"ETag": '"v1"'}, {"items": [{"id": "w1"}], "cursor": "c1"}

    fake_server.routes[("GET", "/v1/runs/r/warnings")] = warnings
    client = WeightscopeClient(fake_server.url)
    page = client.get_warnings("r", wait=0)
    assert page.items == [{"id": "w1"}] and page.cursor == "c1" and page.etag == '"v1"'
    again = client.get_warnings("r", since=page.cursor, etag=page.etag)
    assert again.not_modified and again.items == [] and again.cursor == "c1"
    assert fake_server.requests[-1]["query"] == {"since": ["c1"]}


def test_runs_jobs_and_analyses(fake_server):
    fake_server.routes[("POST", "/v1/runs")] = lambda req: (201, {}, {"id": "r9", **json.loads(req["body"])})
    fake_server.routes[("POST", "/v1/checkpoints/c1/analyses")] = \
        lambda req: (202, {}, {"id": "j1", "status": "queued", **json.loads(req["body"])})
    states = iter(["queued", "running", "succeeded"])
    fake_server.routes[("GET", "/v1/jobs/j1")] = lambda req: (200, {}, {"id": "j1", "status": next(states)})
    client = WeightscopeClient(fake_server.url)
    run = client.start_run("exp", model="gpt", detectors={"sa_collapse": {"consecutive": 2}})
    assert run.id == "r9" and run.info["detectors"] == {"sa_collapse": {"consecutive": 2}}
    job = client.submit_analysis("c1", "spectral_alignment", {"k": 1})
    assert job["kind"] == "spectral_alignment" and job["params"] == {"k": 1}
    assert client.wait_job("j1", poll=0.01)["status"] == "succeeded"


def test_non_finite_metrics_are_encoded_as_strings():
    rec = telemetry_record(3, "_step", {"loss": float("nan"), "grad_norm": float("inf"), "x": 1.5})
    assert json.loads(json.dumps(rec, allow_nan=False))["metrics"] == {"loss": "NaN", "grad_norm": "Infinity", "x": 1.5}
