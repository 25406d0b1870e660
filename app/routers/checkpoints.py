"""/v1/checkpoints: upload, list, read, download, delete, and start analyses."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from storage import checkpoints, jobs, runs
from storage.checkpoints import InvalidCursor
from storage.formats import CheckpointRejected

from ..architecture import ArchitectureInput
from ..ingest import StreamingStats, UploadMeta, ingest
from ..jobs.kinds import PARAMS, prepare
from ..observability import JOBS_SUBMITTED, UPLOAD_BYTES, UPLOADS_REJECTED
from ..problems import Problem, not_found
from ..schemas import AnalysisRequest, CheckpointOut, CheckpointPage, JobOut, TensorList, TensorOut
from ..services import Services, get_services, get_session
from ..uploads import receive_multipart, receive_raw

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "one checkpoint file, or the shards and model.safetensors.index.json"},
                        "name": {"type": "string"}, "run": {"type": "string"}, "step": {"type": "integer"},
                        "tags": {"type": "string", "description": "comma-separated"},
                        "architecture": {"type": "string", "description": 'JSON: {"hints": {...}} and/or {"declarative": {...}}'},
                    },
                }
            },
        },
    }
}


def _split_tags(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def _architecture(raw: str | None) -> dict | None:
    if raw is None:
        return None
    try:
        return ArchitectureInput.model_validate_json(raw).supplied()
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'architecture'}: {e['msg']}" for e in exc.errors())
        raise Problem(422, "validation-error", f"architecture: {detail}", title="Invalid request") from None


def _meta(name, run, step, tags: list[str], fields: dict[str, str], architecture: str | None = None) -> UploadMeta:
    step_value = fields.get("step", step)
    if step_value is not None and not isinstance(step_value, int):
        try:
            step_value = int(step_value)
        except ValueError:
            raise Problem(422, "validation-error", f"step must be an integer, got {step_value!r}", title="Invalid request") from None
    meta = UploadMeta(fields.get("name", name), fields.get("run", run), step_value, _split_tags(tags + [fields.get("tags", "")]),
                      _architecture(fields.get("architecture", architecture)))
    for label, value in (("name", meta.name), ("run", meta.run), *(("tag", t) for t in meta.tags)):
        if value is not None and len(value) > 255:
            raise Problem(422, "validation-error", f"{label} is longer than 255 characters", title="Invalid request")
    return meta


@router.post("", status_code=201, response_model=CheckpointOut, openapi_extra=UPLOAD_BODY,
             summary="Upload a checkpoint (safetensors, PyTorch zip, or sharded Hugging Face folder)")
async def upload_checkpoint(
    request: Request,
    response: Response,
    name: str | None = Query(None, max_length=255),
    run: str | None = Query(None, max_length=255),
    step: int | None = Query(None),
    tags: list[str] = Query([], description="repeat or comma-separate"),
    filename: str | None = Query(None, description="original file name, for raw uploads"),
    architecture: str | None = Query(None, description='JSON: {"hints": {...}} and/or {"declarative": {...}}'),
    services: Services = Depends(get_services),
):
    limit = services.settings.max_upload_bytes
    streamed = None
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            received = await receive_multipart(request, services.blobs, limit)
        else:
            streamed = StreamingStats()
            received = await receive_raw(request, services.blobs, limit, filename, observe=streamed.feed)
        try:
            meta = _meta(name, run, step, tags, received.fields, architecture)
        except Problem:
            received.discard()
            raise
        checkpoint = await run_in_threadpool(ingest, services, received, meta, streamed)
    except CheckpointRejected as exc:
        UPLOADS_REJECTED.labels(exc.kind).inc()
        raise
    except Problem as exc:
        UPLOADS_REJECTED.labels(exc.slug).inc()
        raise
    UPLOAD_BYTES.inc(checkpoint.size)
    _queue_run_analyses(request, services, checkpoint)
    response.headers["Location"] = f"/v1/checkpoints/{checkpoint.id}"
    with services.sessions() as session:
        return CheckpointOut.model_validate(checkpoints.get(session, checkpoint.id))


@router.get("", response_model=CheckpointPage, summary="List checkpoints, newest first")
def list_checkpoints(
    page_size: int = Query(50, ge=1, le=1000),
    page_token: str | None = None,
    run: str | None = None,
    name: str | None = None,
    tag: str | None = None,
    session: Session = Depends(get_session),
):
    try:
        page = checkpoints.list_page(session, page_size=page_size, page_token=page_token, run=run, name=name, tag=tag)
    except InvalidCursor as exc:
        raise Problem(400, "invalid-page-token", str(exc)) from None
    return CheckpointPage(items=[CheckpointOut.model_validate(c) for c in page.items], next_page_token=page.next_token)


def _checkpoint(session: Session, checkpoint_id: str):
    checkpoint = checkpoints.get(session, checkpoint_id)
    if checkpoint is None:
        raise not_found("checkpoint", checkpoint_id)
    return checkpoint


@router.get("/{checkpoint_id}", response_model=CheckpointOut)
def get_checkpoint(checkpoint_id: str, session: Session = Depends(get_session)):
    return CheckpointOut.model_validate(_checkpoint(session, checkpoint_id))


@router.get("/{checkpoint_id}/tensors", response_model=TensorList, summary="Tensors with their ingest statistics")
def get_tensors(checkpoint_id: str, session: Session = Depends(get_session)):
    _checkpoint(session, checkpoint_id)
    return TensorList(checkpoint_id=checkpoint_id, items=[TensorOut.model_validate(t) for t in checkpoints.tensors(session, checkpoint_id)])


@router.get("/{checkpoint_id}/file", summary="The uploaded bytes, bit-exact",
            responses={200: {"content": {"application/octet-stream": {}}}})
def download_file(
    checkpoint_id: str,
    filename: str | None = Query(None, description="which file of a sharded checkpoint"),
    session: Session = Depends(get_session),
    services: Services = Depends(get_services),
):
    checkpoint = _checkpoint(session, checkpoint_id)
    files = checkpoint.files
    if filename is not None:
        chosen = next((f for f in files if f.filename == filename), None)
        if chosen is None:
            raise not_found("file", filename)
    elif len(files) == 1:
        chosen = files[0]
    else:
        names = ", ".join(f.filename for f in files)
        raise Problem(400, "filename-required", f"this checkpoint has {len(files)} files; choose one with ?filename= ({names})")
    return FileResponse(
        services.blobs.path(chosen.sha256),
        media_type="application/octet-stream",
        filename=chosen.filename,
        headers={"ETag": f'"sha256:{chosen.sha256}"', "Digest": f"sha-256={chosen.sha256}"},
    )


@router.delete("/{checkpoint_id}", status_code=204, summary="Delete a checkpoint (its blobs are garbage-collected)")
def delete_checkpoint(checkpoint_id: str, services: Services = Depends(get_services)):
    with services.writing() as session:
        if not checkpoints.remove(session, checkpoint_id):
            raise not_found("checkpoint", checkpoint_id)
    return Response(status_code=204)


@router.post("/{checkpoint_id}/analyses", status_code=202, response_model=JobOut, max_body_size=1 << 20,
             summary="Start an analysis job on a checkpoint")
def start_analysis(
    checkpoint_id: str,
    body: AnalysisRequest,
    request: Request,
    response: Response,
    services: Services = Depends(get_services),
):
    if body.kind not in PARAMS:
        raise Problem(422, "unknown-analysis", f"analysis kind {body.kind!r} is not one of: {', '.join(sorted(PARAMS))}")
    try:
        params = PARAMS[body.kind].model_validate(body.params).model_dump()
    except ValidationError as exc:
        errors = [{"location": ".".join(map(str, ("params", *e["loc"]))), "message": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors)
        raise Problem(422, "validation-error", detail, title="Invalid request", errors=errors) from None
    with services.writing() as session:
        checkpoint = _checkpoint(session, checkpoint_id)
        try:
            params = prepare(body.kind, params, checkpoint, lambda run_id: runs.get(session, run_id))
        except ValueError as exc:
            raise Problem(422, "analysis-not-possible", str(exc)) from None
        job = jobs.enqueue(session, body.kind, params, checkpoint_id)
    request.app.state.executor.submit(job.id)
    JOBS_SUBMITTED.labels(body.kind).inc()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.model_validate(job)


def _queue_run_analyses(request: Request, services: Services, checkpoint) -> None:
    """A checkpoint uploaded with the id of a run that has a probe batch, and a step, gets its SA computed."""
    if checkpoint.run is None or checkpoint.step is None:
        return
    with services.writing() as session:
        run = runs.get(session, checkpoint.run)
        if run is None or run.probe_sha256 is None:
            return
        job = jobs.enqueue(session, "spectral_alignment", {"run": run.id, "step": checkpoint.step, "max_tokens": 4096}, checkpoint.id)
    request.app.state.executor.submit(job.id)
    JOBS_SUBMITTED.labels("spectral_alignment").inc()
