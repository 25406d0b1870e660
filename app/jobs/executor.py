"""Executors start whatever runs jobs. The embedded one is a pool of spawned worker processes (spawned, never
forked, so CUDA and torch threads start clean); a Celery executor can implement the same three methods."""

from __future__ import annotations

import multiprocessing as mp
from typing import Protocol

from ..settings import Settings


class Executor(Protocol):
    def start(self) -> None: ...
    def submit(self, job_id: str) -> None: ...
    def stop(self) -> None: ...


def _worker_process(settings_json: str, stop, wake) -> None:
    from ..observability import configure_logging
    from ..services import Services
    from .worker import Worker

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level)
    services = Services.from_settings(settings)
    try:
        Worker(services).run_forever(stop, wake)
    finally:
        services.close()


class EmbeddedExecutor:
    """N worker processes claiming from the jobs table; `submit` only wakes them early."""

    def __init__(self, settings: Settings, processes: int):
        self.settings = settings
        self.count = processes
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._wake = self._ctx.Event()
        self.processes: list = []

    def start(self) -> None:
        payload = self.settings.model_dump_json()
        for i in range(self.count):
            proc = self._ctx.Process(target=_worker_process, args=(payload, self._stop, self._wake), name=f"weightscope-worker-{i}", daemon=True)
            proc.start()
            self.processes.append(proc)

    def submit(self, job_id: str) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for proc in self.processes:
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        self.processes.clear()


class NoExecutor:
    """Jobs are only enqueued; separate `weightscope-server worker` processes claim them."""

    def start(self) -> None: ...
    def submit(self, job_id: str) -> None: ...
    def stop(self) -> None: ...
