"""Serving the API over HTTP: one uvicorn process, or several on the one port (`serve --processes N`,
WEIGHTSCOPE_API_PROCESSES).

With several, each API process listens on its own socket bound to the port with SO_REUSEPORT, so the kernel spreads
connections evenly over them (with one shared socket, whichever process wakes first takes most of a burst of new
connections). The process that starts them supervises: it runs the job executor and garbage collection once for
all, restarts an API process that dies, and stops them all on SIGTERM or SIGINT. What an API process keeps in
memory stays right across processes: detectors replay stored telemetry when another process wrote (run version),
the newest warning per run is re-read from the database within a second, and long-polls and streams re-check
the database every half second. Prometheus metrics are summed over the processes (prometheus_client's
multiprocess mode, in PROMETHEUS_MULTIPROC_DIR, or a temporary folder this process removes at the end)."""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

import uvicorn

from .services import Services
from .settings import Settings

log = logging.getLogger("weightscope")
_STARTUP_FAILED = 3  # an API process's exit code when it could not start (uvicorn's): stops the server


def serve(settings: Settings, services: Services) -> int:
    from .main import create_app

    if settings.api_processes > 1:
        return _serve_processes(settings, services)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="warning"))
    return _run(server)


def _run(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> int:
    # What the imports and the app built stays for the process's life: frozen, later full garbage collections skip
    # it (unfrozen, one full collection paused a poll burst for about 250 ms on the test VM).
    gc.collect()
    gc.freeze()
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # uvicorn shuts down, then raises the SIGINT it caught again
        pass
    return 0 if server.started else _STARTUP_FAILED


def _listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    family, address = socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]")
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # a port in use fails here, as with one process
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
        port = probe.getsockname()[1]
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(2048)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def _api_process(settings_json: str, sock: socket.socket, supervisor: int) -> None:
    from .main import create_app

    settings = Settings.model_validate_json(settings_json)
    threading.Thread(target=_exit_with, args=(supervisor,), daemon=True, name="weightscope-supervisor-watch").start()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, background=False), log_level="warning"))
    sys.exit(_run(server, [sock]))


def _exit_with(supervisor: int) -> None:
    """Shut down (gracefully, as on SIGTERM) if the supervising process is gone, even if it was killed."""
    while os.getppid() == supervisor:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _serve_processes(settings: Settings, services: Services) -> int:
    from .main import background_work
    from .observability import configure_logging

    configure_logging(settings.log_level)
    try:
        sockets = _listening_sockets(settings.host, settings.port, settings.api_processes)
    except OSError as exc:
        log.error(f"cannot listen on {settings.host}:{settings.port}: {exc}")
        return 1
    port = sockets[0].getsockname()[1]
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="weightscope-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any process that counts is started
    payload = settings.model_dump_json()
    context = mp.get_context("spawn")

    def start(index: int):
        proc = context.Process(target=_api_process, args=(payload, sockets[index], os.getpid()), name=f"weightscope-api-{index}")
        proc.start()
        return proc

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    processes: list = []
    status = 0
    try:
        with background_work(settings, services):
            processes = [start(i) for i in range(len(sockets))]
            log.info(f"serving on {settings.host}:{port} with {len(processes)} API processes")
            while not stop.wait(0.5):
                for i, proc in enumerate(processes):
                    if proc.exitcode is None or stop.is_set():
                        continue
                    if proc.exitcode == _STARTUP_FAILED:
                        log.error(f"API process {proc.pid} could not start; stopping")
                        status = 1
                        stop.set()
                        break
                    log.warning(f"API process {proc.pid} exited with {proc.exitcode}; starting another")
                    processes[i] = start(i)
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for sock in sockets:
            sock.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
