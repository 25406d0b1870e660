"""Upload and read API: every format round-trips, metadata and statistics are right, listing pages are stable,
delete plus garbage collection frees blobs, concurrent identical uploads share one blob."""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch
from collections import OrderedDict

from storage.gc import collect_garbage

from .conftest import blob_files, small_state_dict, staging_files
from .helpers import load_safetensors, multipart, safetensors_bytes, sharded_files, torch_bytes


def _upload(client, data: bytes, **params):
    return client.post("/v1/checkpoints", content=data, params=params, headers={"content-type": "application/octet-stream"})


def _assert_equal_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_safetensors_round_trip_and_metadata(client, settings):
    tensors = small_state_dict()
    data = safetensors_bytes(tensors, {"framework": "pt"})
    r = _upload(client, data, name="mlp", run="run-1", step=100, tags="a,b")
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/checkpoints/{body['id']}"
    assert body["sha256"] == hashlib.sha256(data).hexdigest() == body["canonical_sha256"]
    assert body["format"] == "safetensors" and body["size"] == len(data)
    assert body["tensor_count"] == 4 and body["parameter_count"] == sum(t.numel() for t in tensors.values())
    assert body["dtypes"] == ["F16", "F32", "I64"]
    assert (body["name"], body["run"], body["step"], body["tags"]) == ("mlp", "run-1", 100, ["a", "b"])
    assert body["metadata"] == {"framework": "pt"}

    got = client.get(f"/v1/checkpoints/{body['id']}/file")
    assert got.status_code == 200 and got.content == data
    assert got.headers["etag"] == f'"sha256:{body["sha256"]}"'
    assert client.get(f"/v1/checkpoints/{body['id']}").json() == body
    assert len(blob_files(settings)) == 1 and staging_files(settings) == []


def test_tensor_statistics_match_torch(client):
    tensors = small_state_dict(3)
    tensors["with_nan"] = torch.tensor([1.0, float("nan"), float("inf"), 0.0, -3.0])
    body = _upload(client, safetensors_bytes(tensors)).json()
    items = {t["name"]: t for t in client.get(f"/v1/checkpoints/{body['id']}/tensors").json()["items"]}
    assert list(items) == sorted(items, key=lambda n: list(items).index(n))  # file order kept
    w = tensors["layer1.weight"].double()
    row = items["layer1.weight"]
    assert row["shape"] == [16, 8] and row["numel"] == 128 and row["dtype"] == "F32"
    assert math.isclose(row["mean"], float(w.mean()), rel_tol=1e-9)
    assert math.isclose(row["std"], float(w.std(unbiased=False)), rel_tol=1e-9)
    assert math.isclose(row["l2_norm"], float(w.norm()), rel_tol=1e-9)
    assert (row["min"], row["max"]) == (float(w.min()), float(w.max()))
    special = items["with_nan"]
    assert (special["nan_count"], special["inf_count"], special["zero_fraction"]) == (1, 1, 0.2)
    assert math.isclose(special["mean"], -2 / 3) and special["max"] == 1.0


def test_streamed_and_file_pass_statistics_agree(client):
    """Raw uploads compute statistics while streaming; multipart ones after; both must give the same rows."""
    tensors = small_state_dict(5)
    tensors["special"] = torch.tensor([float("nan"), 0.0, 2.5, float("-inf")], dtype=torch.bfloat16)
    data = safetensors_bytes(tensors)
    raw = _upload(client, data).json()["id"]
    form = client.post("/v1/checkpoints", files=multipart([("m.safetensors", data)])).json()["id"]
    rows = [client.get(f"/v1/checkpoints/{cid}/tensors").json()["items"] for cid in (raw, form)]
    assert rows[0] == rows[1] and len(rows[0]) == len(tensors)


def test_pytorch_zip_round_trip_with_nested_dicts_and_ties(client, settings):
    shared = torch.randn(5, 3)
    obj = {"model": OrderedDict(enc=shared, dec=shared, bias=torch.zeros(5, dtype=torch.bfloat16)),
           "extra": [torch.arange(4)], "epoch": 3}
    data = torch_bytes(obj)
    r = _upload(client, data, filename="model.pt")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "pytorch" and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["canonical_sha256"] != body["sha256"]
    assert body["metadata"] == {"epoch": 3}
    assert body["tied"] == [["model.enc", "model.dec"]]
    assert client.get(f"/v1/checkpoints/{body['id']}/file").content == data
    canonical = (settings.blob_dir / "sha256").rglob(body["canonical_sha256"])
    _assert_equal_tensors(load_safetensors(next(canonical).read_bytes()),
                          {"model.enc": shared, "model.dec": shared, "model.bias": obj["model"]["bias"], "extra.0": obj["extra"][0]})
    assert len(blob_files(settings)) == 2 and staging_files(settings) == []


def test_lightning_checkpoint_keeps_state_dict(client):
    ckpt = {"epoch": 2, "global_step": 40, "state_dict": {"net.w": torch.ones(2, 2)}, "optimizer_states": [{"state": {}}]}
    body = _upload(client, torch_bytes(ckpt), filename="last.ckpt").json()
    assert body["metadata"] == {"epoch": 2, "global_step": 40}
    names = [t["name"] for t in client.get(f"/v1/checkpoints/{body['id']}/tensors").json()["items"]]
    assert names == ["net.w"]


def test_sharded_upload_round_trip(client, settings):
    tensors = {f"layers.{i}.weight": torch.randn(3, 4) for i in range(5)}
    files = sharded_files(tensors, shards=2)
    r = client.post("/v1/checkpoints", files=multipart(files), data={"name": "sharded", "step": "7", "tags": "hf"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "hf-sharded" and body["step"] == 7 and body["tags"] == ["hf"]
    assert [f["filename"] for f in body["files"]] == [name for name, _ in files]
    assert body["size"] == sum(len(d) for _, d in files)
    for name, data in files:
        got = client.get(f"/v1/checkpoints/{body['id']}/file", params={"filename": name})
        assert got.content == data
    r = client.get(f"/v1/checkpoints/{body['id']}/file")
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    merged = next((settings.blob_dir / "sha256").rglob(body["canonical_sha256"])).read_bytes()
    _assert_equal_tensors(load_safetensors(merged), tensors)
    assert body["sha256"] == body["canonical_sha256"] == hashlib.sha256(merged).hexdigest()


def test_multipart_single_file_with_query_metadata(client):
    data = safetensors_bytes(small_state_dict())
    r = client.post("/v1/checkpoints", files=multipart([("w.safetensors", data)]), params={"run": "r9"})
    assert r.status_code == 201 and r.json()["run"] == "r9"
    assert r.json()["files"][0]["filename"] == "w.safetensors"


def test_list_filters_and_pagination_stable_under_inserts(client):
    ids = []
    for i in range(7):
        ids.append(_upload(client, safetensors_bytes(small_state_dict(i)), run="r" if i % 2 else "s", tags=f"t{i % 3}").json()["id"])
    newest_first = ids[::-1]
    page = client.get("/v1/checkpoints", params={"page_size": 3}).json()
    assert [c["id"] for c in page["items"]] == newest_first[:3]
    _upload(client, safetensors_bytes(small_state_dict(99)))  # a new row must not shift later pages
    seen = [c["id"] for c in page["items"]]
    while page["next_page_token"]:
        page = client.get("/v1/checkpoints", params={"page_size": 3, "page_token": page["next_page_token"]}).json()
        seen += [c["id"] for c in page["items"]]
    assert seen == newest_first
    assert {c["id"] for c in client.get("/v1/checkpoints", params={"run": "r"}).json()["items"]} == set(ids[1::2])
    assert {c["id"] for c in client.get("/v1/checkpoints", params={"tag": "t1"}).json()["items"]} == {ids[1], ids[4]}
    bad = client.get("/v1/checkpoints", params={"page_token": "garbage"})
    assert bad.status_code == 400 and bad.json()["type"] == "/problems/invalid-page-token"


def test_delete_then_garbage_collection(client, settings):
    data = safetensors_bytes(small_state_dict())
    first = _upload(client, data).json()
    second = _upload(client, data).json()
    assert first["id"] != second["id"] and len(blob_files(settings)) == 1
    services = client.app.state.services
    assert client.delete(f"/v1/checkpoints/{first['id']}").status_code == 204
    assert collect_garbage(services.sessions, services.blobs, grace_seconds=0).blobs_removed == 0  # still referenced
    assert client.get(f"/v1/checkpoints/{second['id']}/file").content == data
    assert client.delete(f"/v1/checkpoints/{second['id']}").status_code == 204
    assert collect_garbage(services.sessions, services.blobs, grace_seconds=3600).blobs_removed == 0  # within grace
    assert collect_garbage(services.sessions, services.blobs, grace_seconds=0).blobs_removed == 1
    assert blob_files(settings) == []
    missing = client.get(f"/v1/checkpoints/{second['id']}")
    assert missing.status_code == 404 and missing.json()["type"] == "/problems/not-found"
    assert client.delete(f"/v1/checkpoints/{second['id']}").status_code == 404


def test_concurrent_identical_uploads_share_one_blob(live_server, settings):
    data = safetensors_bytes({"w": torch.randn(256, 256)})

    def upload(i: int):
        with httpx.Client(base_url=live_server.url, timeout=60) as c:
            return c.post("/v1/checkpoints", content=data, params={"name": f"c{i}"})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(upload, range(20)))
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses if r.status_code != 201]
    bodies = [r.json() for r in responses]
    assert len({b["id"] for b in bodies}) == 20
    assert {b["sha256"] for b in bodies} == {hashlib.sha256(data).hexdigest()}
    assert len(blob_files(settings)) == 1 and staging_files(settings) == []
    with httpx.Client(base_url=live_server.url) as c:
        listed = c.get("/v1/checkpoints", params={"page_size": 100}).json()["items"]
        assert len(listed) == 20 and all(item["tensor_count"] == 1 for item in listed)
        assert c.get(f"/v1/checkpoints/{bodies[7]['id']}/file").content == data
