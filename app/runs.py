"""Telemetry ingestion and detection for runs: upsert records, run the run's detectors, store new warnings,
and wake anyone long-polling or streaming that run's warnings."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict
from functools import partial

from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from metanets.detectors import DETECTORS, DetectorSet, Record, encode_value
from storage import runs

from .problems import Problem, not_found
from .services import Services

CACHE_RUNS = 256


class DetectorCache:
    """In-memory DetectorSet per run, tagged with the run's version: another process's batch changes the version
    and forces a replay from the telemetry table, so detection stays exact with several API processes."""

    def __init__(self, size: int = CACHE_RUNS):
        self.size = size
        self._entries: OrderedDict[str, tuple[int, DetectorSet]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, run_id: str, version: int) -> DetectorSet | None:
        with self._lock:
            entry = self._entries.pop(run_id, None)
        return entry[1] if entry and entry[0] == version else None

    def put(self, run_id: str, version: int, detectors: DetectorSet) -> None:
        with self._lock:
            self._entries[run_id] = (version, detectors)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class RunEvents:
    """Wakes long-polls and streams in this process when a run gets new warnings (others re-check the database)."""

    def __init__(self) -> None:
        self._events: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, run_id: str) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        token = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._events.setdefault(run_id, set()).add(token)
        return token

    def unsubscribe(self, run_id: str, token) -> None:
        with self._lock:
            self._events.get(run_id, set()).discard(token)

    def notify(self, run_id: str) -> None:
        with self._lock:
            tokens = list(self._events.get(run_id, ()))
        for loop, event in tokens:
            loop.call_soon_threadsafe(event.set)


class WarningPages:
    """What dashboards poll, served from memory: each run's newest warning seq (re-read from the database at most
    every `ttl` seconds, at once after an ingest in this process) and rendered pages per (run, cursor, limit),
    valid while that seq is unchanged. Another process's new warning shows within `ttl`.

    The async methods read and render off the event loop, once for all the polls that need the same thing at the
    same time: a burst of polls that finds the seq expired, or a page not rendered yet, waits on one query."""

    def __init__(self, ttl: float = 1.0, size: int = 4096):
        self.ttl, self.size = ttl, size
        self._newest: dict[str, tuple[int, float]] = {}
        self._forgotten: dict[str, int] = {}  # run -> times forget() was called, so a read racing an ingest is not kept
        self._pages: OrderedDict[tuple[str, int, int], tuple[int, bytes, int, bool]] = OrderedDict()
        self._flights: dict[tuple, asyncio.Future] = {}  # work under way in a thread, by what it computes
        self._lock = threading.Lock()

    def cached_newest(self, run_id: str) -> int | None:
        entry = self._newest.get(run_id)
        return entry[0] if entry and time.monotonic() - entry[1] < self.ttl else None

    def newest(self, services: Services, run_id: str) -> int:
        cached = self.cached_newest(run_id)
        if cached is not None:
            return cached
        generation = self._forgotten.get(run_id, 0)
        with services.sessions() as session:
            latest = runs.newest_warning(session, run_id)
        if latest is None:
            raise not_found("run", run_id)
        with self._lock:
            if self._forgotten.get(run_id, 0) == generation:
                self._newest[run_id] = (latest, time.monotonic())
        return latest

    async def newest_async(self, services: Services, run_id: str) -> int:
        cached = self.cached_newest(run_id)
        if cached is not None:
            return cached
        return await self._once(("newest", run_id), partial(self.newest, services, run_id))

    async def page_async(self, run_id: str, cursor: int, limit: int, latest: int, render) -> tuple[bytes, int]:
        """The page's body and the newest seq it shows: cached, or `render()` -> (body, newest seq, new cursor,
        has items), kept if it still shows `latest`."""
        cached = self.get(run_id, cursor, limit, latest)
        if cached is not None:
            return cached[0], latest

        def render_and_keep():
            body, latest_now, new_cursor, has_items = render()
            if latest_now == latest:
                self.put(run_id, cursor, limit, latest, body, new_cursor, has_items)
            return body, latest_now

        return await self._once(("page", run_id, cursor, limit, latest), render_and_keep)

    async def _once(self, key: tuple, work):
        flight = self._flights.get(key)
        if flight is None or flight.get_loop() is not asyncio.get_running_loop():
            flight = asyncio.ensure_future(run_in_threadpool(work))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(flight)

    def _landed(self, key: tuple, flight: asyncio.Future) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved, so a 404 whose waiters all left is not logged as never retrieved

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._forgotten[run_id] = self._forgotten.get(run_id, 0) + 1
            self._newest.pop(run_id, None)
        self._flights.pop(("newest", run_id), None)

    def get(self, run_id: str, cursor: int, limit: int, latest: int) -> tuple[bytes, int, bool] | None:
        with self._lock:
            entry = self._pages.get((run_id, cursor, limit))
        return entry[1:] if entry and entry[0] == latest else None

    def put(self, run_id: str, cursor: int, limit: int, latest: int, body: bytes, new_cursor: int, has_items: bool) -> None:
        with self._lock:
            self._pages[(run_id, cursor, limit)] = (latest, body, new_cursor, has_items)
            self._pages.move_to_end((run_id, cursor, limit))
            while len(self._pages) > self.size:
                self._pages.popitem(last=False)


def detectors_for(spec: dict) -> DetectorSet:
    """Build the run's detectors from its settings; a bad name, option or option type is the caller's 422."""
    try:
        for name, overrides in spec.items():
            if name in DETECTORS and overrides:
                TypeAdapter(DETECTORS[name].config_cls).validate_python(overrides)
        return DetectorSet.from_spec(spec)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise Problem(422, "validation-error", f"detectors: {detail}", title="Invalid request") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise Problem(422, "validation-error", f"detectors: {exc}", title="Invalid request") from None


def _encoded(record: dict) -> dict:
    metrics = {name: encode_value(float(value)) for name, value in record["metrics"].items()}
    return {"step": record["step"], "layer": record["layer"], "metrics": metrics}


def _flagged(row: dict) -> dict:
    return {**row, "nonfinite": any(not math.isfinite(float(v)) for v in row["metrics"].values())}


def warning_row(warning) -> dict:
    data = warning.to_dict()
    return {"key": data["id"], "step": data["step"], "layers": data["layers"], "detector": data["detector"],
            "severity": data["severity"], "message": data["message"], "values": data["values"]}


def ingest_telemetry(services: Services, cache: DetectorCache, events: RunEvents, run_id: str, records: list[dict]) -> dict:
    """Store a batch and detect on it, in one write transaction per batch."""
    incoming = [_encoded(r) for r in records]
    try:
        with services.writing() as session:
            run = runs.lock(session, run_id)
            if run is None:
                raise not_found("run", run_id)
            detectors = cache.take(run_id, run.version)
            rows = [_flagged(row) for row in runs.merge_records(session, run_id, incoming)]
            runs.upsert_telemetry(session, run_id, rows)
            if detectors is None:  # first batch here, or another process wrote since: replay everything stored
                detectors = detectors_for(run.detectors)
                fired = [w for chunk in runs.iter_telemetry(session, run_id) for w in detectors.ingest(
                    Record.parse({"step": r.step, "layer": r.layer, "metrics": r.metrics}) for r in chunk)]
            else:
                fired = detectors.ingest(Record.parse(r) for r in rows)
            new = runs.add_warnings(session, run_id, [warning_row(w) for w in fired])
            version = run.version
    except BaseException:
        cache.take(run_id, -1)  # the cached detectors may hold records that were rolled back
        raise
    cache.put(run_id, version, detectors)
    if new:
        events.notify(run_id)
    return {"run_id": run_id, "stored": len(incoming), "new_warnings": new}


def downsample(points: list[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """Keep each bucket's minimum and maximum (in step order), so spikes survive; non-finite values always kept."""
    if len(points) <= max_points:
        return points
    buckets = max(1, max_points // 2)
    size = math.ceil(len(points) / buckets)
    out: list[tuple[int, float]] = []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        special = [p for p in bucket if not math.isfinite(p[1])]
        finite = [p for p in bucket if math.isfinite(p[1])]
        keep = set(special)
        if finite:
            keep.add(min(finite, key=lambda p: p[1]))
            keep.add(max(finite, key=lambda p: p[1]))
        out.extend(sorted(keep))
    return out
