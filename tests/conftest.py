"""Shared fixtures. Storage and API tests run twice: on SQLite and on the PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
import uvicorn
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from storage.db import migrate
from storage.models import Base

PG_ADMIN_URL = os.environ.get("WEIGHTSCOPE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_database():
    """A fresh, migrated PostgreSQL database for this test session (dropped at the end)."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"weightscope_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:  # a connection failure here fails the suite: PostgreSQL must be up
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


def _truncate(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(t.name for t in Base.metadata.sorted_tables) + " CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "weightscope.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    _truncate(url)
    return url


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        workers=0,
        api_keys=[],
        max_upload_bytes=64 << 20,
        job_lease_seconds=5,
        job_poll_seconds=0.1,
        gc_interval_seconds=3600,
        _env_file=None,
    )


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving the app on a loopback port in a background thread (real HTTP)."""

    def __init__(self, settings: Settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live_server(settings):
    with LiveServer(settings) as server:
        yield server


def blob_files(settings: Settings) -> list[Path]:
    return [p for p in (settings.blob_dir / "sha256").rglob("*") if p.is_file()]


def staging_files(settings: Settings) -> list[Path]:
    return [p for p in (settings.blob_dir / "tmp").iterdir()] if (settings.blob_dir / "tmp").exists() else []


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer1.weight": torch.randn(16, 8, generator=g),
        "layer1.bias": torch.randn(16, generator=g),
        "layer2.weight": torch.randn(4, 16, generator=g).to(torch.float16),
        "bn.num_batches_tracked": torch.tensor(7),
    }
