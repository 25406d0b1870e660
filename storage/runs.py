"""Runs, their telemetry and warnings: idempotent upserts and cursor reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import Run, RunWarning, TelemetryRecord, utcnow


def _insert(session: Session, model):
    """INSERT with ON CONFLICT support for the session's dialect."""
    return (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert(model)


def create(session: Session, name: str, model: dict | None, detectors: dict) -> Run:
    run = Run(name=name, model=model, detectors=detectors, version=0)
    session.add(run)
    session.flush()
    return run


def get(session: Session, run_id: str) -> Run | None:
    return session.get(Run, run_id)


def list_runs(session: Session, limit: int, name: str | None = None) -> list[Run]:
    query = select(Run).order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
    if name is not None:
        query = query.where(Run.name == name)
    return list(session.scalars(query))


def merge_records(session: Session, run_id: str, rows: list[dict]) -> list[dict]:
    """Fold a batch into what is stored: one record per (step, layer), whose metrics a later record updates by
    name (a step's loss and its gradient norm may come in separate records). Needs the run locked."""
    merged: dict[tuple[int, str], dict] = {}
    for row in rows:
        merged.setdefault((row["step"], row["layer"]), {}).update(row["metrics"])
    stored = session.execute(
        select(TelemetryRecord.step, TelemetryRecord.layer, TelemetryRecord.metrics).where(
            TelemetryRecord.run_id == run_id, tuple_(TelemetryRecord.step, TelemetryRecord.layer).in_(list(merged))
        )
    )
    for step, layer, metrics in stored:
        merged[(step, layer)] = {**metrics, **merged[(step, layer)]}
    return [{"step": step, "layer": layer, "metrics": metrics} for (step, layer), metrics in merged.items()]


def upsert_telemetry(session: Session, run_id: str, rows: list[dict]) -> int:
    """Store merged records (see `merge_records`) keyed by (run, step, layer), and bump the run's version."""
    if not rows:
        return 0
    now = utcnow()
    values = [{"run_id": run_id, "received_at": now, **row} for row in rows]
    statement = _insert(session, TelemetryRecord).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=["run_id", "step", "layer"],
        set_={"metrics": statement.excluded.metrics, "nonfinite": statement.excluded.nonfinite, "received_at": now},
    )
    session.execute(statement)
    run = lock(session, run_id)
    top = max(row["step"] for row in rows)
    run.version += 1
    run.last_step = top if run.last_step is None else max(run.last_step, top)
    return len(rows)


def lock(session: Session, run_id: str) -> Run | None:
    """The run row, locked for this transaction (PostgreSQL row lock; SQLite write transactions are exclusive)."""
    return session.get(Run, run_id, with_for_update=True, populate_existing=True)


def telemetry(session: Session, run_id: str, *, layer: str | None = None, since_step: int | None = None) -> list[TelemetryRecord]:
    query = select(TelemetryRecord).where(TelemetryRecord.run_id == run_id)
    if layer is not None:
        query = query.where(TelemetryRecord.layer == layer)
    if since_step is not None:
        query = query.where(TelemetryRecord.step >= since_step)
    return list(session.scalars(query.order_by(TelemetryRecord.step, TelemetryRecord.layer)))


def iter_telemetry(session: Session, run_id: str, chunk: int = 4096) -> Iterator[list[TelemetryRecord]]:
    """All of a run's records in step order, ``chunk`` rows at a time (a replay need not hold the whole run)."""
    query = select(TelemetryRecord).where(TelemetryRecord.run_id == run_id)
    result = session.scalars(query.order_by(TelemetryRecord.step, TelemetryRecord.layer).execution_options(yield_per=chunk))
    yield from result.partitions()


def add_warnings(session: Session, run_id: str, warnings: Iterable[dict]) -> int:
    """Insert warnings; one whose key the run already has is skipped (re-detection is idempotent). Returns how
    many were new."""
    rows = [{"run_id": run_id, "created_at": utcnow(), **w} for w in warnings]
    if not rows:
        return 0
    statement = _insert(session, RunWarning).values(rows).on_conflict_do_nothing(index_elements=["run_id", "key"])
    return len(session.execute(statement.returning(RunWarning.seq)).all())  # rowcount is -1 on PostgreSQL here


def warnings_after(session: Session, run_id: str, cursor: int, limit: int) -> list[RunWarning]:
    return list(
        session.scalars(
            select(RunWarning).where(RunWarning.run_id == run_id, RunWarning.seq > cursor).order_by(RunWarning.seq).limit(limit)
        )
    )


def last_warning_seq(session: Session, run_id: str) -> int:
    return session.scalar(select(func.coalesce(func.max(RunWarning.seq), 0)).where(RunWarning.run_id == run_id))


def newest_warning(session: Session, run_id: str) -> int | None:
    """The run's newest warning seq (0 if none), or None if the run does not exist; one round trip."""
    exists_q = select(Run.id).where(Run.id == run_id).scalar_subquery()
    latest_q = select(func.coalesce(func.max(RunWarning.seq), 0)).where(RunWarning.run_id == run_id).scalar_subquery()
    found, latest = session.execute(select(exists_q, latest_q)).one()
    return None if found is None else int(latest)


def set_probe(session: Session, run_id: str, digest: str) -> None:
    lock(session, run_id).probe_sha256 = digest
