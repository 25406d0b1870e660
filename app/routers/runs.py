"""/v1/runs: training runs, their telemetry, warnings (poll with ETag, long-poll, or server-sent events) and series."""

from __future__ import annotations

import asyncio
import json
import math
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from metanets.detectors import DETECTORS
from storage import runs
from storage.formats.safetensors import read_header_at

from .. import runs as run_service
from ..problems import Problem, not_found
from ..schemas import _Out
from ..uploads import receive_raw
from ..services import Services, get_services, get_session

router = APIRouter(prefix="/v1/runs", tags=["runs"])

MAX_BATCH_BYTES = 8 << 20
MAX_PROBE_BYTES = 256 << 20
MAX_RECORDS = 20_000
LONG_POLL_LIMIT = 30.0


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    model: dict[str, Any] | str | None = Field(None, max_length=10_000, description="free-form description of the model: a name or a JSON object")
    detectors: dict[str, dict[str, Any] | None] | list[str] | None = Field(
        None, description="detector name -> option overrides, or a list of names; absent: all with defaults",
        examples=[{"sa_collapse": {"consecutive": 3}, "loss_spike": None}])


class RunOut(_Out):
    id: str
    name: str
    model: dict[str, Any] | str | None
    detectors: dict[str, Any]
    last_step: int | None
    created_at: Any
    updated_at: Any


class RunList(BaseModel):
    items: list[RunOut]


class TelemetryRecordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0)
    layer: str = Field(min_length=1, max_length=512, description='module name, or "_step" for per-step scalars')
    metrics: dict[str, float] = Field(max_length=512, description='numbers; "NaN", "Infinity" and "-Infinity" are accepted')


class TelemetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[TelemetryRecordIn] = Field(max_length=MAX_RECORDS)


class TelemetryAccepted(BaseModel):
    run_id: str
    stored: int
    new_warnings: int


class WarningOut(_Out):
    id: str = Field(validation_alias="key")
    seq: int
    step: int
    layers: list[str]
    detector: str
    severity: str
    message: str
    values: dict[str, Any]
    created_at: Any


class WarningPage(BaseModel):
    items: list[WarningOut]
    cursor: str = Field(description="pass as ?since= to get only newer warnings")


class Series(BaseModel):
    run_id: str
    metric: str
    layer: str
    points: list[tuple[int, float | str]] = Field(description='[step, value]; non-finite values as "NaN", "Infinity", "-Infinity"')


def _run(session: Session, run_id: str):
    run = runs.get(session, run_id)
    if run is None:
        raise not_found("run", run_id)
    return run


def _spec(detectors) -> dict:
    """The run's detector settings, explicit: absent means every detector with its defaults."""
    if detectors is None:
        return {name: None for name in DETECTORS}
    return {name: None for name in detectors} if isinstance(detectors, list) else detectors


@router.post("", status_code=201, response_model=RunOut, max_body_size=1 << 20, summary="Start a run")
def create_run(body: RunIn, response: Response, services: Services = Depends(get_services)):
    spec = _spec(body.detectors)
    run_service.detectors_for(spec)
    with services.writing() as session:
        run = runs.create(session, body.name, body.model, spec)
    response.headers["Location"] = f"/v1/runs/{run.id}"
    return RunOut.model_validate(run)


@router.get("", response_model=RunList, summary="Runs, newest first")
def list_runs(name: str | None = None, page_size: int = Query(100, ge=1, le=1000), session: Session = Depends(get_session)):
    return RunList(items=[RunOut.model_validate(r) for r in runs.list_runs(session, page_size, name)])


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: str, session: Session = Depends(get_session)):
    return RunOut.model_validate(_run(session, run_id))


@router.post("/{run_id}/telemetry", response_model=TelemetryAccepted, max_body_size=MAX_BATCH_BYTES,
             summary="Post per-step, per-layer records; idempotent by (run, step, layer)")
async def post_telemetry(run_id: str, body: TelemetryIn, request: Request, services: Services = Depends(get_services)):
    records = [r.model_dump() for r in body.records]
    accepted = await run_in_threadpool(run_service.ingest_telemetry, services, request.app.state.detector_cache,
                                       request.app.state.run_events, run_id, records)
    if accepted["new_warnings"]:
        request.app.state.warning_pages.forget(run_id)
    return accepted


def _cursor(since: str | None) -> int:
    if since in (None, ""):
        return 0
    if not since.isdigit():
        raise Problem(400, "invalid-cursor", f"since={since!r} is not a cursor this server issued")
    return int(since)


def _page(services: Services, run_id: str, cursor: int, limit: int) -> tuple[list, int, int]:
    with services.sessions() as session:
        if runs.get(session, run_id) is None:
            raise not_found("run", run_id)
        items = runs.warnings_after(session, run_id, cursor, limit)
        latest = runs.last_warning_seq(session, run_id)
    return items, latest, (items[-1].seq if items else max(cursor, 0))


async def _wait_for_warnings(request: Request, services: Services, run_id: str, cursor: int, limit: int, seconds: float):
    """Page of warnings after `cursor`, waiting up to `seconds` for one to appear (woken at once in this process,
    and re-checking the database every half second for warnings another process stored)."""
    deadline = time.monotonic() + seconds
    token = request.app.state.run_events.subscribe(run_id)
    try:
        while True:
            page = await run_in_threadpool(_page, services, run_id, cursor, limit)
            remaining = deadline - time.monotonic()
            if page[0] or remaining <= 0 or await request.is_disconnected():
                return page
            token[1].clear()
            try:
                await asyncio.wait_for(token[1].wait(), timeout=min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass
    finally:
        request.app.state.run_events.unsubscribe(run_id, token)


@router.get("/{run_id}/warnings", response_model=WarningPage, responses={304: {"description": "nothing new since the ETag"}},
            summary="Warnings after a cursor; ETag and 304, and `wait=` long-polls up to 30 s")
async def get_warnings(
    run_id: str,
    request: Request,
    since: str | None = None,
    wait: float = Query(0, ge=0, le=LONG_POLL_LIMIT),
    limit: int = Query(100, ge=1, le=1000),
    if_none_match: str | None = Header(None),
    services: Services = Depends(get_services),
):
    pages: run_service.WarningPages = request.app.state.warning_pages
    cursor = _cursor(since)
    latest = await pages.newest_async(services, run_id)
    unchanged = if_none_match == warnings_etag(latest, cursor)
    if wait > 0:
        has_items = latest > cursor
        if unchanged or not has_items:
            # Long-poll: until a warning newer than the client's view exists (or the wait ends), then answer for `since`.
            _, newer, _ = await _wait_for_warnings(request, services, run_id, max(cursor, latest), 1, wait)
            if newer > latest:
                pages.forget(run_id)
                latest = await pages.newest_async(services, run_id)
                unchanged = False
    etag = warnings_etag(latest, cursor)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if unchanged:
        return Response(status_code=304, headers=headers)
    body, latest_now = await pages.page_async(run_id, cursor, limit, latest, partial(render_warnings_page, services, run_id, cursor, limit))
    if latest_now != latest:
        headers["ETag"] = warnings_etag(latest_now, cursor)
    return Response(body, media_type="application/json", headers=headers)


def render_warnings_page(services: Services, run_id: str, cursor: int, limit: int) -> tuple[bytes, int, int, bool]:
    """The page after `cursor` as JSON, with the newest seq when it was read, the new cursor and whether it has items."""
    items, latest_now, new_cursor = _page(services, run_id, cursor, limit)
    body = json.dumps(WarningPage(items=[WarningOut.model_validate(w) for w in items], cursor=str(new_cursor)).model_dump(mode="json")).encode()
    return body, latest_now, new_cursor, bool(items)


def warnings_etag(latest: int, cursor: int) -> str:
    """The page for `since=cursor` changes only when the run's newest warning does."""
    return f'"w{latest}-c{cursor}"'


@router.get("/{run_id}/warnings/stream", summary="Warnings as server-sent events (resume with Last-Event-ID)",
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream_warnings(
    run_id: str,
    request: Request,
    since: str | None = None,
    last_event_id: str | None = Header(None),
    services: Services = Depends(get_services),
):
    cursor = _cursor(last_event_id or since)
    await run_in_threadpool(_page, services, run_id, cursor, 1)  # 404 before the stream starts

    async def events():
        nonlocal cursor
        yield ": connected\n\n"
        while not await request.is_disconnected():
            items, _, cursor_after = await _wait_for_warnings(request, services, run_id, cursor, 100, 15.0)
            if not items:
                yield ": keep-alive\n\n"
                continue
            for warning in items:
                data = WarningOut.model_validate(warning).model_dump(mode="json")
                yield f"id: {warning.seq}\nevent: warning\ndata: {json.dumps(data)}\n\n"
            cursor = cursor_after

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class ProbeOut(BaseModel):
    run_id: str
    probe_sha256: str
    inputs: dict[str, Any]


@router.put("/{run_id}/probe", response_model=ProbeOut, openapi_extra={"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
            summary="The probe batch (safetensors with a tensor named inputs) for server-side spectral alignment")
async def put_probe(run_id: str, request: Request, services: Services = Depends(get_services)):
    with services.sessions() as session:
        _run(session, run_id)
    received = await receive_raw(request, services.blobs, MAX_PROBE_BYTES, None)
    staged = received.files[0].staged
    try:
        staged.finish_writing()
        header = await run_in_threadpool(read_header_at, staged.path)
        inputs = next((e for e in header.tensors if e.name == "inputs"), None)
        if inputs is None:
            raise Problem(422, "invalid-probe", "the probe file needs a tensor named 'inputs'")
        info = staged.commit()
    finally:
        received.discard()
    with services.writing() as session:
        runs.set_probe(session, run_id, info.sha256)
    return ProbeOut(run_id=run_id, probe_sha256=info.sha256, inputs={"dtype": inputs.dtype, "shape": list(inputs.shape)})


@router.get("/{run_id}/series", response_model=Series, summary="One metric of one layer over steps, downsampled for plotting")
def get_series(
    run_id: str,
    metric: str,
    layer: str = "_step",
    since_step: int | None = Query(None, ge=0),
    max_points: int = Query(1000, ge=2, le=100_000),
    session: Session = Depends(get_session),
):
    _run(session, run_id)
    points = []
    for record in runs.telemetry(session, run_id, layer=layer, since_step=since_step):
        if metric in record.metrics:
            points.append((record.step, float(record.metrics[metric])))
    kept = run_service.downsample(points, max_points)
    return Series(run_id=run_id, metric=metric, layer=layer,
                  points=[(step, value if math.isfinite(value) else run_service.encode_value(value)) for step, value in kept])
