"""Checkpoint rows: create, read, list with cursor pagination, delete."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.orm import Session, selectinload

from .models import Checkpoint, CheckpointFile, CheckpointTag, GraphBlob, Job, TensorRecord, ZooMember


class InvalidCursor(ValueError):
    pass


@dataclass
class Page:
    items: list[Checkpoint]
    next_token: str | None


def add(session: Session, checkpoint: Checkpoint, files: list[CheckpointFile], tensors: list[TensorRecord], tags: list[str]) -> Checkpoint:
    """Insert a checkpoint with its files, tensors and tags; the caller owns the transaction."""
    checkpoint.files = files
    checkpoint.tensors = tensors
    checkpoint.tag_rows = [CheckpointTag(tag=t) for t in dict.fromkeys(tags)]
    session.add(checkpoint)
    return checkpoint


def get(session: Session, checkpoint_id: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(Checkpoint.id == checkpoint_id).options(selectinload(Checkpoint.files))
    )


def tensors(session: Session, checkpoint_id: str) -> list[TensorRecord]:
    return list(
        session.scalars(select(TensorRecord).where(TensorRecord.checkpoint_id == checkpoint_id).order_by(TensorRecord.position))
    )


def _encode(created_at: datetime, checkpoint_id: str) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": checkpoint_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> tuple[datetime, str]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return datetime.fromisoformat(raw["c"]), str(raw["i"])
    except (ValueError, KeyError, TypeError):
        raise InvalidCursor("page_token is not one this server issued") from None


def list_page(
    session: Session,
    *,
    page_size: int,
    page_token: str | None = None,
    run: str | None = None,
    name: str | None = None,
    tag: str | None = None,
) -> Page:
    """Newest first, keyed on (created_at, id): rows inserted while paging never shift later pages."""
    query = select(Checkpoint).options(selectinload(Checkpoint.files))
    if run is not None:
        query = query.where(Checkpoint.run == run)
    if name is not None:
        query = query.where(Checkpoint.name == name)
    if tag is not None:
        query = query.where(exists().where(and_(CheckpointTag.checkpoint_id == Checkpoint.id, CheckpointTag.tag == tag)))
    if page_token:
        created_at, checkpoint_id = _decode(page_token)
        query = query.where(
            or_(Checkpoint.created_at < created_at, and_(Checkpoint.created_at == created_at, Checkpoint.id < checkpoint_id))
        )
    rows = list(session.scalars(query.order_by(Checkpoint.created_at.desc(), Checkpoint.id.desc()).limit(page_size + 1)))
    token = _encode(rows[page_size - 1].created_at, rows[page_size - 1].id) if len(rows) > page_size else None
    return Page(rows[:page_size], token)


def remove(session: Session, checkpoint_id: str) -> bool:
    """Delete the rows (files, tensors, tags and jobs cascade); blobs are reclaimed by garbage collection."""
    for model in (CheckpointTag, CheckpointFile, TensorRecord, Job, GraphBlob, ZooMember):
        session.execute(delete(model).where(model.checkpoint_id == checkpoint_id))
    return session.execute(delete(Checkpoint).where(Checkpoint.id == checkpoint_id)).rowcount > 0


def set_architecture(session: Session, checkpoint_id: str, supplied: dict | None, description: dict) -> None:
    """Store the user's architecture input and the description built from it; cached graphs no longer apply."""
    checkpoint = session.get(Checkpoint, checkpoint_id)
    checkpoint.architecture_input = supplied
    checkpoint.architecture = description
    session.execute(delete(GraphBlob).where(GraphBlob.checkpoint_id == checkpoint_id))


def cache_description(session: Session, checkpoint_id: str, description: dict) -> None:
    session.get(Checkpoint, checkpoint_id).architecture = description


def graph(session: Session, checkpoint_id: str, converter_version: str, mode: str) -> GraphBlob | None:
    return session.get(GraphBlob, (checkpoint_id, converter_version, mode))


def add_graph(session: Session, row: GraphBlob) -> GraphBlob:
    """Insert a cached graph unless a concurrent request already did; returns the stored row."""
    existing = graph(session, row.checkpoint_id, row.converter_version, row.mode)
    if existing is not None:
        return existing
    session.add(row)
    return row
