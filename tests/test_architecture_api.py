"""Architecture and graph endpoints: descriptions from names and hints, refusals naming the problem, cached
graphs that invert exactly to the uploaded state dict."""

from __future__ import annotations

import io
import json

import torch
from torch import nn

from metanets import ArchitectureDescription, expected_edges, graph_to_state_dict
from storage.gc import collect_garbage

from .conftest import blob_files
from .helpers import multipart, safetensors_bytes


def _mlp_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).state_dict().items()}


def _gpt2_state_dict() -> dict[str, torch.Tensor]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16))
    state = model.state_dict()
    return {k: v.detach().clone() for k, v in state.items() if k != "lm_head.weight"}  # tied: saved once


def _upload(client, tensors, **params) -> dict:
    r = client.post("/v1/checkpoints", content=safetensors_bytes(tensors), params=params)
    assert r.status_code == 201, r.text
    return r.json()


def test_mlp_architecture_and_graph_round_trip(client, settings):
    state = _mlp_state_dict()
    cid = _upload(client, state)["id"]
    r = client.get(f"/v1/checkpoints/{cid}/architecture")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"]["family"] == "sequential" and body["input"] is None
    kinds = body["summary"]["groups_by_kind"]
    assert kinds["input"] == 1 and kinds["hidden"] == 1 and kinds["output"] == 1
    hidden = [g for g in body["description"]["groups"] if g["kind"] == "hidden"]
    assert hidden[0]["size"] == 16 and hidden[0]["permutable"]

    summary = client.get(f"/v1/checkpoints/{cid}/graph").json()
    desc = ArchitectureDescription.from_json(body["description"])
    n_params = sum(t.numel() for t in state.values())
    assert summary["summary"]["num_edges"] == sum(expected_edges(desc, "scalar").values()) >= n_params
    assert summary["summary"]["nodes_by_type"]["hidden"] == 16
    assert summary["summary"]["nodes_by_activation"]["relu"] == 16  # the sequential family's default activation

    raw = client.get(f"/v1/checkpoints/{cid}/graph", params={"format": "pt"})
    assert raw.status_code == 200 and raw.headers["etag"] == f'"sha256:{summary["sha256"]}"'
    saved = torch.load(io.BytesIO(raw.content), weights_only=True)  # tensors only: safe to load
    from torch_geometric.data import Data

    data = Data(**{k: v for k, v in saved.items() if isinstance(v, torch.Tensor)}, num_nodes=saved["num_nodes"], mode=saved["mode"],
                grid=tuple(saved["grid"]))
    back = graph_to_state_dict(desc, data)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)

    again = client.get(f"/v1/checkpoints/{cid}/graph").json()
    assert again["sha256"] == summary["sha256"]  # cached, not rebuilt
    graphs_before = len(blob_files(settings))
    assert client.delete(f"/v1/checkpoints/{cid}").status_code == 204
    services = client.app.state.services
    assert collect_garbage(services.sessions, services.blobs, grace_seconds=0).blobs_removed == graphs_before


def test_gpt2_needs_heads_hint_and_refuses_a_wrong_one(client):
    state = _gpt2_state_dict()
    cid = _upload(client, state)["id"]
    missing = client.get(f"/v1/checkpoints/{cid}/architecture")
    assert missing.status_code == 422 and missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"] == "/problems/unrecognised-architecture" and "num_heads" in missing.json()["detail"]

    wrong = client.put(f"/v1/checkpoints/{cid}/architecture", json={"hints": {"num_heads": 5}})
    assert wrong.status_code == 422 and "num_heads" in wrong.json()["detail"]
    assert wrong.json()["problems"]

    ok = client.put(f"/v1/checkpoints/{cid}/architecture", json={"hints": {"num_heads": 4}})
    assert ok.status_code == 200, ok.text
    assert ok.json()["summary"]["family"] == "gpt2" and ok.json()["input"] == {"hints": {"num_heads": 4}}
    kinds = ok.json()["summary"]["groups_by_kind"]
    assert kinds.get("head") and kinds.get("vocab")
    got = client.get(f"/v1/checkpoints/{cid}/architecture").json()
    assert got["description"] == ok.json()["description"]  # stored with its hints
    graph = client.get(f"/v1/checkpoints/{cid}/graph").json()["summary"]
    assert graph["edges_by_type"]["head"] > 0 and graph["edges_by_type"]["residual"] > 0


def test_upload_with_architecture_field_is_checked_atomically(client, settings):
    state = _gpt2_state_dict()
    data = safetensors_bytes(state)
    bad = client.post("/v1/checkpoints", files=multipart([("m.safetensors", data)]), data={"architecture": json.dumps({"hints": {"num_heads": 7}})})
    assert bad.status_code == 422 and bad.json()["type"] == "/problems/unrecognised-architecture"
    assert client.get("/v1/checkpoints").json()["items"] == [] and blob_files(settings) == []
    junk = client.post("/v1/checkpoints", content=data, params={"architecture": "{not json"})
    assert junk.status_code == 422 and junk.json()["detail"].startswith("architecture:")
    good = client.post("/v1/checkpoints", files=multipart([("m.safetensors", data)]), data={"architecture": json.dumps({"hints": {"num_heads": 4}})})
    assert good.status_code == 201, good.text
    arch = client.get(f"/v1/checkpoints/{good.json()['id']}/architecture").json()
    assert arch["input"] == {"hints": {"num_heads": 4}} and arch["summary"]["family"] == "gpt2"


def test_tensor_that_fits_no_group_is_named(client):
    state = _mlp_state_dict()
    state["stray.weight"] = torch.randn(5, 5)
    cid = _upload(client, state)["id"]
    r = client.get(f"/v1/checkpoints/{cid}/architecture")
    assert r.status_code == 422 and "stray.weight" in r.json()["detail"]
    assert client.get(f"/v1/checkpoints/{cid}/graph").status_code == 422
    assert client.get("/v1/checkpoints/nope/graph").status_code == 404
    assert client.put(f"/v1/checkpoints/{cid}/architecture", json={"bogus": 1}).status_code == 422
