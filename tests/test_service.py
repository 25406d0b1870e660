"""Service plumbing: API keys, loopback guard, health, readiness, metrics, request ids, OpenAPI, and a
server killed mid-upload leaving nothing visible."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import InsecureBinding, create_app
from storage import keys

from .conftest import free_port, small_state_dict, staging_files
import torch

from .helpers import safetensors_bytes, torch_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_env_api_keys_required_when_configured(settings):
    with TestClient(create_app(settings.model_copy(update={"api_keys": ["s3cret"]}))) as client:
        r = client.get("/v1/checkpoints")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/checkpoints", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/checkpoints", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open


def test_database_keys_are_hashed_and_revocable(client):
    services = client.app.state.services
    assert client.get("/v1/checkpoints").status_code == 200  # no keys anywhere: open on loopback
    with services.writing() as session:
        row, secret = keys.create(session, "ci")
        session.flush()
        key_id = row.id
        assert row.key_hash != secret and secret not in (row.prefix, row.name)
    client.app.state.keys._db_has_keys = (0.0, False)  # skip the 5 s cache
    assert client.get("/v1/checkpoints").status_code == 401
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/checkpoints", headers=auth).status_code == 200
    with services.writing() as session:
        assert keys.revoke(session, key_id)
    assert client.get("/v1/checkpoints", headers=auth).status_code == 200  # cached for a few seconds...
    client.app.state.keys._valid_until.clear()  # ...then the revocation applies
    assert client.get("/v1/checkpoints", headers=auth).status_code == 401


def test_refuses_public_address_without_keys(settings):
    with pytest.raises(InsecureBinding, match="refusing to listen on 0.0.0.0"):
        with TestClient(create_app(settings.model_copy(update={"host": "0.0.0.0"}))):
            pass
    with TestClient(create_app(settings.model_copy(update={"host": "0.0.0.0", "api_keys": ["k"]}))) as client:
        assert client.get("/healthz").status_code == 200


def test_health_readiness_metrics_and_request_ids(client, settings):
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "blob_store": "ok"}
    client.post("/v1/checkpoints", content=safetensors_bytes(small_state_dict()))
    client.post("/v1/checkpoints", content=b"definitely not a checkpoint")
    metrics = client.get("/metrics").text
    assert 'weightscope_http_requests_total{method="POST",route="/v1/checkpoints",status="201"}' in metrics
    assert 'weightscope_uploads_rejected_total{reason="unsupported-format"}' in metrics
    r = client.get("/v1/checkpoints/nope", headers={"X-Request-ID": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123" and r.json()["request_id"] == "trace-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32
    staging = settings.blob_dir / "tmp"
    staging.rename(settings.blob_dir / "tmp-aside")
    staging.write_bytes(b"")  # a file where the staging folder should be: nothing can be written, root or not
    try:
        down = client.get("/readyz")
        assert down.status_code == 503 and down.json()["checks"]["blob_store"].startswith("unavailable")
    finally:
        staging.unlink()
        (settings.blob_dir / "tmp-aside").rename(staging)
    assert client.get("/readyz").status_code == 200


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/checkpoints", "/v1/checkpoints/{checkpoint_id}", "/v1/checkpoints/{checkpoint_id}/tensors",
                 "/v1/checkpoints/{checkpoint_id}/file", "/v1/checkpoints/{checkpoint_id}/analyses", "/v1/jobs/{job_id}"):
        assert path in paths, path
    assert set(paths["/v1/checkpoints"]["post"]["requestBody"]["content"]) == {"application/octet-stream", "multipart/form-data"}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def test_server_killed_mid_upload_leaves_nothing_visible(settings, tmp_path):
    """SIGKILL the real server while a body streams in; after restart nothing is listed and GC clears staging."""
    port = free_port()
    env = {**os.environ, "WEIGHTSCOPE_DATA_DIR": str(settings.data_dir), "WEIGHTSCOPE_DATABASE_URL": settings.db_url,
           "WEIGHTSCOPE_WORKERS": "0", "WEIGHTSCOPE_GC_GRACE_SECONDS": "1", "PYTHONPATH": ROOT}

    def start():
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)

    server = start()
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/checkpoints?name=half HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        for _ in range(20):
            sock.sendall(b"\1" * (1 << 20))
        deadline = time.monotonic() + 30
        while not staging_files(settings):
            assert time.monotonic() < deadline, "upload never reached the staging area"
            time.sleep(0.05)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        sock.close()
    assert staging_files(settings)  # the crash left a partial file behind...
    time.sleep(1.1)
    server = start()  # ...which the startup garbage collection removes
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/checkpoints").json()["items"] == []
        deadline = time.monotonic() + 10
        while staging_files(settings):
            assert time.monotonic() < deadline, "staging file survived restart"
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(30)


def test_api_process_never_imports_torch(settings, tmp_path):
    """Uploads (PyTorch files included, via the sandbox) and job submission keep torch out of the server process:
    its memory and thread pools stay with the loader and the workers."""
    pt = tmp_path / "m.pt"
    pt.write_bytes(torch_bytes({"w": torch.ones(3)}))
    script = f"""
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
settings = Settings.model_validate_json({settings.model_dump_json()!r})
with TestClient(create_app(settings)) as client:
    r = client.post("/v1/checkpoints", content=Path({str(pt)!r}).read_bytes(), params={{"filename": "m.pt"}})
    assert r.status_code == 201, r.text
    assert client.post(f"/v1/checkpoints/{{r.json()['id']}}/analyses", json={{"kind": "weight_spectra"}}).status_code == 202
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
