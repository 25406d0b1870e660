"""The long-lived objects one server process shares: settings, database, blob store, job executor."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.blobs import LocalBlobStore
from storage.db import make_engine, make_sessionmaker

from .settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: LocalBlobStore

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        return cls(settings, engine, make_sessionmaker(engine), LocalBlobStore(settings.blob_dir))

    def close(self) -> None:
        self.engine.dispose()


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_session(request: Request):
    """One session per request, committed by the handler that writes."""
    with request.app.state.services.sessions() as session:
        yield session
