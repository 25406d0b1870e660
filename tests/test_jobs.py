"""The job table as a queue: claims are exclusive, leases expire, a crashed worker's job is retried, and the
embedded executor's spawned workers run weight_spectra end to end."""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import torch
from fastapi.testclient import TestClient

from app.jobs.executor import _worker_process
from app.jobs.worker import Worker
from app.main import create_app
from app.services import Services
from storage import jobs
from storage.models import Job, utcnow

from .helpers import safetensors_bytes


def _services(settings) -> Services:
    return Services.from_settings(settings)


def _enqueue(services: Services, n: int = 1, **kwargs) -> list[str]:
    with services.writing() as session:
        return [jobs.enqueue(session, "weight_spectra", {}, **kwargs).id for _ in range(n)]


def test_claims_are_exclusive_under_concurrency(settings):
    services = _services(settings)
    ids = set(_enqueue(services, 12))

    def claim(i: int):
        with services.writing() as session:
            job = jobs.claim(session, f"w{i}", 30)
            return job.id if job else None

    with ThreadPoolExecutor(6) as pool:
        claimed = [j for j in pool.map(claim, range(20)) if j]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    services.close()


def test_expired_lease_is_reclaimed_then_failed_after_max_attempts(settings):
    services = _services(settings)
    (job_id,) = _enqueue(services, max_attempts=2)
    for attempt, owner in enumerate(["a", "b"], start=1):
        with services.writing() as session:
            job = jobs.claim(session, owner, 30)
            assert job.id == job_id and job.attempts == attempt and job.lease_owner == owner
        with services.writing() as session:
            assert jobs.claim(session, "c", 30) is None  # leased: nobody else gets it
            session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    with services.writing() as session:
        assert not jobs.heartbeat(session, job_id, "a", 30, 0.5)  # a's lease is gone
        assert jobs.claim(session, "c", 30) is None
        job = session.get(Job, job_id)
        assert job.status == "failed" and job.error["type"] == "/problems/worker-lost"
    services.close()


def _upload(client, tensors) -> str:
    r = client.post("/v1/checkpoints", content=safetensors_bytes(tensors))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _wait(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_weight_spectra_through_embedded_workers(settings):
    settings = settings.model_copy(update={"workers": 1})
    g = torch.Generator().manual_seed(0)
    tensors = {"fc.weight": torch.randn(64, 32, generator=g), "fc.bias": torch.randn(64, generator=g),
               "conv.weight": torch.randn(8, 4, 3, 3, generator=g)}
    with TestClient(create_app(settings)) as client:
        cid = _upload(client, tensors)
        r = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "weight_spectra"})
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        assert r.json()["status"] == "queued"
        job = _wait(client, r.json()["id"])
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["attempts"] == 1, job
    layers = {layer["name"]: layer for layer in job["result"]["layers"]}
    assert set(layers) == {"fc.weight", "conv.weight"}  # 1-D bias skipped
    want = torch.linalg.svdvals(tensors["fc.weight"].double())
    assert torch.allclose(torch.tensor(layers["fc.weight"]["singular_values"], dtype=torch.float64), want, rtol=1e-6)
    assert layers["conv.weight"]["matrix_shape"] == [8, 36]


def test_job_of_crashed_worker_is_retried(settings):
    """Kill a worker process mid-job (SIGKILL): its lease runs out and another worker finishes the job."""
    settings = settings.model_copy(update={"job_lease_seconds": 2.0})
    g = torch.Generator().manual_seed(1)
    tensors = {f"l{i}.weight": torch.randn(600, 600, generator=g) for i in range(12)}
    with TestClient(create_app(settings)) as client:
        cid = _upload(client, tensors)
        job_id = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "weight_spectra"}).json()["id"]
        ctx = mp.get_context("spawn")
        stop, wake = ctx.Event(), ctx.Event()
        doomed = ctx.Process(target=_worker_process, args=(settings.model_dump_json(), stop, wake), daemon=True)
        doomed.start()
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline, "worker never claimed the job"
            time.sleep(0.05)
        doomed.kill()
        doomed.join()
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        survivor = Worker(client.app.state.services, owner="survivor")
        deadline = time.monotonic() + 30
        while survivor.run_once() != job_id:  # claimable only once the dead worker's lease runs out
            assert time.monotonic() < deadline, "job was never reclaimed"
            time.sleep(0.2)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert len(job["result"]["layers"]) == 12


def test_failed_analysis_reports_problem(client, settings):
    """A blob lost from the store fails the job with a problem document; the worker itself carries on."""
    cid = _upload(client, {"w": torch.randn(4, 4)})
    checkpoint = client.get(f"/v1/checkpoints/{cid}").json()
    job_id = client.post(f"/v1/checkpoints/{cid}/analyses", json={"kind": "weight_spectra"}).json()["id"]
    client.app.state.services.blobs.delete(checkpoint["canonical_sha256"])
    worker = Worker(client.app.state.services)
    assert worker.run_once() == job_id and worker.run_once() is None
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "/problems/analysis-failed"
    assert "missing from the store" in job["error"]["detail"]
