"""The FastAPI application: routers, error handling, auth, observability, and the embedded job executor."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager, contextmanager, nullcontext

from fastapi import Depends, FastAPI

from storage import keys
from storage.gc import collect_garbage

from . import problems
from .auth import KeyRegistry, require_key
from .jobs.executor import EmbeddedExecutor, NoExecutor
from .observability import RequestContext, configure_logging
from .routers import architecture, checkpoints, health, jobs, runs, zoos
from .runs import DetectorCache, RunEvents, WarningPages
from .services import Services
from .settings import Settings
from .warnings_fast_path import WarningsFastPath
from .zoos import LoadedMetanets

log = logging.getLogger("weightscope")


class InsecureBinding(RuntimeError):
    pass


def check_binding(services: Services) -> None:
    """Never serve a non-loopback address without API keys."""
    if services.settings.loopback or services.settings.api_keys:
        return
    with services.sessions() as session:
        if keys.any_active(session):
            return
    raise InsecureBinding(
        f"refusing to listen on {services.settings.host} with no API keys: set WEIGHTSCOPE_API_KEYS "
        "or create one with `weightscope-server keys create NAME`"
    )


def _gc_loop(services: Services, stop: threading.Event) -> None:
    while True:
        try:
            report = collect_garbage(services.sessions, services.blobs, services.settings.gc_grace_seconds)
            if report.blobs_removed or report.staging_removed:
                log.info(f"garbage collection removed {report.blobs_removed} blobs, {report.staging_removed} staging files")
        except Exception:
            log.exception("garbage collection failed")
        if stop.wait(services.settings.gc_interval_seconds):
            return


@contextmanager
def background_work(settings: Settings, services: Services):
    """The embedded job executor and periodic garbage collection: one set per server, however many API processes
    serve requests (with several, the process that supervises them runs it). Yields the executor."""
    executor = EmbeddedExecutor(settings, settings.workers) if settings.workers > 0 else NoExecutor()
    executor.start()
    stop_gc = threading.Event()
    gc_thread = threading.Thread(target=_gc_loop, args=(services, stop_gc), daemon=True, name="weightscope-gc")
    gc_thread.start()
    try:
        yield executor
    finally:
        stop_gc.set()
        executor.stop()
        gc_thread.join(5)


def create_app(settings: Settings | None = None, background: bool = True) -> FastAPI:
    """The API. `background=False` for one of several API processes: jobs are then only enqueued here (the
    supervising process's workers claim them) and garbage collection runs elsewhere."""
    settings = settings or Settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = Services.from_settings(settings)
        check_binding(services)
        app.state.services = services
        app.state.keys = KeyRegistry(services)
        app.state.detector_cache = DetectorCache()
        app.state.run_events = RunEvents()
        app.state.warning_pages = WarningPages()
        app.state.metanets = LoadedMetanets()
        try:
            with background_work(settings, services) if background else nullcontext(NoExecutor()) as executor:
                app.state.executor = executor
                yield
        finally:
            services.close()

    app = FastAPI(
        title="Weightscope",
        version="0.1.0",
        description="Weight-space analysis service: upload checkpoints, inspect their tensors, run analyses.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.add_middleware(WarningsFastPath)  # inside RequestContext: same request ids, access log and metrics
    app.add_middleware(RequestContext)
    app.include_router(health.router)
    for router in (checkpoints.router, architecture.router, jobs.router, runs.router, zoos.router):
        app.include_router(router, dependencies=[Depends(require_key)])
    return app
