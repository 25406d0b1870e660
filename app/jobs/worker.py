"""A worker claims jobs from the table under a lease, runs them, and keeps the lease alive with heartbeats.
A worker that dies stops heartbeating; its lease runs out and another worker retries the job."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from storage import jobs

from ..services import Services

log = logging.getLogger("weightscope.worker")


class Worker:
    def __init__(self, services: Services, owner: str | None = None):
        self.services = services
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = services.settings.job_lease_seconds

    def run_once(self) -> str | None:
        """Claim and run one job; returns its id, or None when nothing was waiting."""
        with self.services.writing() as session:
            job = jobs.claim(session, self.owner, self.lease)
            if job is None:
                return None
            job_id, kind, params, checkpoint_id = job.id, job.kind, dict(job.params), job.checkpoint_id
        log.info("job started", extra={"request_id": job_id})
        progress = _ProgressBeat(self, job_id)
        progress.start()
        try:
            from .runners import RUNNERS, JobContext  # torch is imported in workers only

            result = RUNNERS[kind](JobContext(self.services, job_id, params, checkpoint_id, progress.set))
            error = None
        except Exception as exc:  # the job's failure is data for its owner, not a crash of the worker
            log.exception("job failed", extra={"request_id": job_id})
            result, error = None, {"type": "/problems/analysis-failed", "title": "Analysis failed", "status": 422,
                                   "detail": f"{type(exc).__name__}: {exc}"[:4000]}
        finally:
            progress.stop()
        with self.services.writing() as session:
            jobs.finish(session, job_id, self.owner, result=result, error=error)
        return job_id

    def run_forever(self, stop: threading.Event | None = None, wake=None) -> None:
        poll = self.services.settings.job_poll_seconds
        while not (stop and stop.is_set()):
            try:
                ran = self.run_once()
            except Exception:
                log.exception("worker loop error")
                ran = None
            if ran is None:
                if wake is not None:
                    wake.wait(poll)
                    wake.clear()
                elif stop is not None:
                    stop.wait(poll)


class _ProgressBeat:
    """Background thread: renews the lease every third of its length and stores the latest progress."""

    def __init__(self, worker: Worker, job_id: str):
        self.worker, self.job_id = worker, job_id
        self.value: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def set(self, fraction: float) -> None:
        self.value = float(fraction)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = max(0.2, min(self.worker.lease / 3, 2.0))
        while not self._stop.wait(interval):
            try:
                with self.worker.services.writing() as session:
                    jobs.heartbeat(session, self.job_id, self.worker.owner, self.worker.lease, self.value)
            except Exception:
                log.exception("heartbeat failed", extra={"request_id": self.job_id})
