"""The job queue in the jobs table: enqueue, claim with a lease, heartbeat, finish, read."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from .models import Job, utcnow

TERMINAL = ("succeeded", "failed")


def enqueue(session: Session, kind: str, params: dict, checkpoint_id: str | None = None, max_attempts: int = 3) -> Job:
    job = Job(kind=kind, params=params, checkpoint_id=checkpoint_id, max_attempts=max_attempts, status="queued", progress=0.0, attempts=0)
    session.add(job)
    session.flush()
    return job


def get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def _claimable(now: datetime):
    expired = and_(Job.status == "running", Job.lease_expires_at < now, Job.attempts < Job.max_attempts)
    return or_(Job.status == "queued", expired)


def claim(session: Session, owner: str, lease_seconds: float) -> Job | None:
    """Take the oldest queued job, or one whose worker's lease ran out (the worker crashed), for `owner`.

    Atomic on PostgreSQL through FOR UPDATE SKIP LOCKED, and on SQLite when run in a write transaction
    (`storage.db.transaction`), which holds the write lock from BEGIN."""
    now = utcnow()
    fail_abandoned(session, now)
    job_id = session.scalar(
        select(Job.id).where(_claimable(now)).order_by(Job.created_at).limit(1).with_for_update(skip_locked=True)
    )
    if job_id is None:
        return None
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            started_at=now,
            updated_at=now,
        )
    )
    return session.get(Job, job_id, populate_existing=True)


def fail_abandoned(session: Session, now: datetime | None = None) -> int:
    """Jobs whose lease ran out on their last allowed attempt are failed, not retried forever."""
    now = now or utcnow()
    return session.execute(
        update(Job)
        .where(Job.status == "running", Job.lease_expires_at < now, Job.attempts >= Job.max_attempts)
        .values(
            status="failed",
            finished_at=now,
            updated_at=now,
            error={"type": "/problems/worker-lost", "title": "Worker lost", "status": 500,
                   "detail": "the worker running this job stopped responding on its last allowed attempt"},
        )
    ).rowcount


def heartbeat(session: Session, job_id: str, owner: str, lease_seconds: float, progress: float | None) -> bool:
    """Extend the lease and record progress; False if this worker no longer holds the job."""
    now = utcnow()
    values: dict = {"lease_expires_at": now + timedelta(seconds=lease_seconds), "updated_at": now}
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    return session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running").values(**values)
    ).rowcount == 1


def finish(session: Session, job_id: str, owner: str, *, result: dict | None = None, error: dict | None = None) -> bool:
    """Record the outcome, only if `owner` still holds the lease (a reclaimed job is not written twice)."""
    now = utcnow()
    values = {"status": "failed" if error else "succeeded", "finished_at": now, "updated_at": now, "lease_expires_at": None}
    if error:
        values["error"] = error
    else:
        values.update(result=result, progress=1.0)
    return session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running").values(**values)
    ).rowcount == 1


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value
