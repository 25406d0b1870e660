"""The long-lived objects one server process shares: settings, database, blob store, job executor."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.blobs import LocalBlobStore
from storage.db import make_engine, make_sessionmaker, make_write_sessionmaker, transaction

from .settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    write_sessions: sessionmaker[Session]
    blobs: LocalBlobStore

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        return cls(settings, engine, make_sessionmaker(engine), make_write_sessionmaker(engine), LocalBlobStore(settings.blob_dir))

    def writing(self):
        """`with services.writing() as session:` one write transaction."""
        return transaction(self.write_sessions)

    def close(self) -> None:
        self.engine.dispose()


async def get_services(request: Request) -> Services:
    """Async on purpose: a sync dependency costs a thread hop on every request."""
    return request.app.state.services


def get_session(request: Request):
    """One read session per request; handlers write through `services.writing()`."""
    with request.app.state.services.sessions() as session:
        yield session
