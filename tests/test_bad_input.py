"""Hostile and malformed uploads: each gets a clear 4xx problem+json naming the problem, and leaves no row,
no blob and no staging file behind."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import struct
import zipfile

import httpx
import pytest
import torch

from .conftest import blob_files, small_state_dict, staging_files
from .helpers import multipart, safetensors_bytes, sharded_files, torch_bytes


class Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _header(header: dict | bytes, data: bytes = b"", declared: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


def _plain_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes/readme.txt", "hello")
    return buf.getvalue()


def _zip_with(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


VALID = safetensors_bytes(small_state_dict())

RAW_CASES = {
    "empty body": (b"", 400, "empty-upload", "empty"),
    "truncated safetensors": (VALID[: len(VALID) // 2], 422, "invalid-checkpoint", "data section"),
    "header longer than file": (_header(b'{"a":1}', declared=5000), 422, "invalid-checkpoint", "exceeds the 7 bytes after it"),
    "header over the limit": (_header(b"{}", declared=200_000_000), 422, "invalid-checkpoint", "limit of 100000000"),
    "invalid header json": (_header(b"{not json"), 422, "invalid-checkpoint", "not valid UTF-8 JSON"),
    "overlapping offsets": (
        _header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
        422, "invalid-checkpoint", "overlaps",
    ),
    "out of range offsets": (_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 4), 422, "invalid-checkpoint", "cover 16 bytes"),
    "disallowed dtype": (_header({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), 422, "invalid-checkpoint", "C64"),
    "shape and size disagree": (_header({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), 422, "invalid-checkpoint", "needs 12 bytes"),
    "legacy non-zip pickle": (torch_bytes(small_state_dict(), _use_new_zipfile_serialization=False), 415, "unsupported-format", "legacy"),
    "zip that is not pytorch": (_plain_zip(), 415, "unsupported-format", "no data.pkl"),
    "zip with traversal entry": (_zip_with({"archive/data.pkl": b"x", "../evil": b"x"}), 422, "invalid-checkpoint", "unsafe path"),
    "random bytes": (b"hello world, not a checkpoint", 415, "unsupported-format", "unrecognised"),
}


def _assert_clean_rejection(response, status: int, slug: str, words: str, client, settings) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"/problems/{slug}" and body["status"] == status
    assert words in body["detail"]
    assert client.get("/v1/checkpoints").json()["items"] == []
    assert blob_files(settings) == [] and staging_files(settings) == []


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_raw_upload_rejected_cleanly(client, settings, case):
    data, status, slug, words = RAW_CASES[case]
    r = client.post("/v1/checkpoints", content=data, headers={"content-type": "application/octet-stream"})
    _assert_clean_rejection(r, status, slug, words, client, settings)


def test_code_in_pickle_never_runs(client, settings, tmp_path):
    marker = tmp_path / "pwned"
    data = torch_bytes({"w": torch.ones(2), "payload": Exploit(str(marker))})
    r = client.post("/v1/checkpoints", content=data, params={"filename": "model.pt"})
    _assert_clean_rejection(r, 422, "unsafe-checkpoint", "weights_only", client, settings)
    assert not marker.exists()
    # The same file, loaded unsafely, does run the payload: the test above can fail.
    torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


def test_body_over_limit_refused_while_streaming(live_server, settings):
    """A chunked body (no Content-Length) gets its 413 while the client is still sending, long before the end."""
    limit = settings.max_upload_bytes
    chunk = b"\0" * (1 << 20)
    sent = 0
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/checkpoints HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n")
        answer = b""
        while sent < 4 * limit:
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                break
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer and b"upload-too-large" in answer
    assert sent < limit + (16 << 20)  # answered within a few MiB of the limit, not after 4x the limit

    with socket.create_connection(("127.0.0.1", live_server.port), timeout=30) as sock:  # refused on the header alone
        sock.sendall(b"POST /v1/checkpoints HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (limit + 1))
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
    with httpx.Client(base_url=live_server.url, timeout=60) as c:
        assert c.get("/v1/checkpoints").json()["items"] == []
    assert blob_files(settings) == [] and staging_files(settings) == []


def test_index_pointing_outside_folder(client, settings):
    files = sharded_files({"a": torch.ones(2), "b": torch.zeros(2)})
    index = json.loads(files[-1][1])
    index["weight_map"]["a"] = "../../etc/passwd"
    files[-1] = (files[-1][0], json.dumps(index).encode())
    r = client.post("/v1/checkpoints", files=multipart(files))
    _assert_clean_rejection(r, 422, "invalid-bundle", "outside the uploaded folder", client, settings)


def test_index_naming_missing_shard(client, settings):
    files = sharded_files({"a": torch.ones(2), "b": torch.zeros(2)})
    r = client.post("/v1/checkpoints", files=multipart([files[0], files[2]]))
    _assert_clean_rejection(r, 422, "invalid-bundle", "which was not uploaded", client, settings)


def test_index_disagreeing_with_shards(client, settings):
    files = sharded_files({"a": torch.ones(2), "b": torch.zeros(2)})
    index = json.loads(files[-1][1])
    index["weight_map"]["a"], index["weight_map"]["b"] = index["weight_map"]["b"], index["weight_map"]["a"]
    files[-1] = (files[-1][0], json.dumps(index).encode())
    r = client.post("/v1/checkpoints", files=multipart(files))
    _assert_clean_rejection(r, 422, "invalid-bundle", "the index places it in", client, settings)


def test_several_files_without_index(client, settings):
    r = client.post("/v1/checkpoints", files=multipart([("a.safetensors", VALID), ("b.safetensors", VALID)]))
    _assert_clean_rejection(r, 422, "invalid-bundle", "index", client, settings)


def test_bad_shard_among_good_ones(client, settings):
    files = sharded_files({"a": torch.ones(2), "b": torch.zeros(2)})
    files[1] = (files[1][0], files[1][1][:-3])
    r = client.post("/v1/checkpoints", files=multipart(files))
    _assert_clean_rejection(r, 422, "invalid-checkpoint", "data section", client, settings)


@pytest.mark.parametrize("name", ["../model.safetensors", "dir/model.safetensors", "/abs.safetensors", "..", "a\\b.pt"])
def test_file_name_with_path_parts(client, settings, name):
    r = client.post("/v1/checkpoints", files=multipart([(name, VALID)]))
    _assert_clean_rejection(r, 422, "invalid-bundle", "plain base name", client, settings)
    r = client.post("/v1/checkpoints", content=VALID, params={"filename": name})
    _assert_clean_rejection(r, 422, "invalid-bundle", "plain base name", client, settings)


def test_truncated_multipart_body(client, settings):
    body = b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.safetensors\"\r\n\r\n" + VALID[:50]
    r = client.post("/v1/checkpoints", content=body, headers={"content-type": "multipart/form-data; boundary=XYZ"})
    _assert_clean_rejection(r, 400, "invalid-multipart", "closing boundary", client, settings)


def test_non_integer_step(client, settings):
    r = client.post("/v1/checkpoints", files=multipart([("m.safetensors", VALID)]), data={"step": "ten"})
    _assert_clean_rejection(r, 422, "validation-error", "step must be an integer", client, settings)


def test_unknown_ids_and_analysis_kinds(client):
    r = client.get("/v1/checkpoints/nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "checkpoint 'nope' does not exist"
    assert client.get("/v1/jobs/nope").status_code == 404
    cid = client.post("/v1/checkpoints", content=VALID).json()["id"]
    r = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "astrology"})
    assert r.status_code == 422 and "weight_spectra" in r.json()["detail"]
    r = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "weight_spectra", "params": {"bogus": 1}})
    assert r.status_code == 422 and "params.bogus" in r.json()["detail"]
    r = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "weight_spectra", "params": {"min_evals": "many"}})
    assert r.status_code == 422 and "params.min_evals" in r.json()["detail"]
    assert client.get("/v1/checkpoints").json()["items"][0]["id"] == cid
    r = client.post(f"/v1/checkpoints/{cid}/analyses", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["type"] == "/problems/validation-error"
