"""Engine and session factory for SQLite (embedded default) and PostgreSQL, plus Alembic migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # WAL lets readers proceed during writes from the worker processes; FKs are off by default in SQLite.
            dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN itself
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Write transactions take the lock at BEGIN, so concurrent writers queue (busy_timeout) instead of
            # failing when a read lock cannot be upgraded; reads stay deferred and never block writers (WAL).
            immediate = conn.get_execution_options().get("sqlite_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reads, and for writes that do not read first."""
    return sessionmaker(engine, expire_on_commit=False)


def make_write_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for read-then-write transactions: on SQLite they hold the write lock from BEGIN."""
    return sessionmaker(engine.execution_options(sqlite_immediate=True), expire_on_commit=False)


@contextmanager
def transaction(writes: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a write transaction, committed on success and rolled back on error."""
    with writes() as session, session.begin():
        yield session


def migrate(url: str) -> None:
    """Bring the database schema to the newest revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "head")
