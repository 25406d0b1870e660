"""Garbage collection: remove blobs no row references, and staging files left by crashed uploads."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select, union
from sqlalchemy.orm import Session, sessionmaker

from .blobs import LocalBlobStore
from .models import Checkpoint, CheckpointFile, GraphBlob, Metanet, Run


@dataclass
class GcReport:
    blobs_removed: int
    staging_removed: int


def referenced_digests(session: Session) -> set[str]:
    """Every digest some row points to. New tables that own blobs add their column here."""
    query = union(
        select(CheckpointFile.sha256), select(Checkpoint.canonical_sha256), select(GraphBlob.sha256),
        select(Metanet.weights_sha256).where(Metanet.weights_sha256.is_not(None)),
        select(Run.probe_sha256).where(Run.probe_sha256.is_not(None)),
    )
    return set(session.scalars(query))


def collect_garbage(sessions: sessionmaker[Session], store: LocalBlobStore, grace_seconds: float) -> GcReport:
    """Delete unreferenced blobs untouched for `grace_seconds`.

    Uploads commit their blob (or refresh its mtime on a duplicate) just before inserting rows, so a blob younger
    than the grace period may belong to a row about to be committed and is kept."""
    started = time.time()
    candidates = [digest for digest, mtime in store.digests() if mtime < started - grace_seconds]
    removed = 0
    if candidates:
        with sessions() as session:
            referenced = referenced_digests(session)
        for digest in candidates:
            if digest not in referenced:
                store.delete(digest)
                removed += 1
    return GcReport(removed, store.sweep_staging(grace_seconds))
