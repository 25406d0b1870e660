"""/v1/checkpoints/{id}/architecture and /graph: the description of a checkpoint and its parameter graph."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from storage import checkpoints

from .. import architecture
from ..architecture import ArchitectureInput
from ..problems import not_found
from ..services import Services, get_services, get_session

router = APIRouter(prefix="/v1/checkpoints/{checkpoint_id}", tags=["architecture"])


class ArchitectureOut(BaseModel):
    checkpoint_id: str
    input: dict | None
    summary: dict
    description: dict


class GraphSummary(BaseModel):
    checkpoint_id: str
    mode: str
    sha256: str
    size: int
    summary: dict


def _checkpoint(session: Session, checkpoint_id: str):
    checkpoint = checkpoints.get(session, checkpoint_id)
    if checkpoint is None:
        raise not_found("checkpoint", checkpoint_id)
    return checkpoint


def _out(checkpoint, desc: dict) -> ArchitectureOut:
    return ArchitectureOut(checkpoint_id=checkpoint.id, input=checkpoint.architecture_input,
                           summary=architecture.summarize_description(desc), description=desc)


@router.get("/architecture", response_model=ArchitectureOut, summary="Neuron groups and axes of every tensor")
async def get_architecture(checkpoint_id: str, session: Session = Depends(get_session), services: Services = Depends(get_services)):
    checkpoint = _checkpoint(session, checkpoint_id)
    desc = await run_in_threadpool(architecture.description, services, checkpoint)
    return _out(checkpoint, desc)


@router.put("/architecture", response_model=ArchitectureOut, max_body_size=16 << 20,
            summary="Supply hints or a declarative description; refused with 422 if it contradicts the weights")
async def put_architecture(checkpoint_id: str, body: ArchitectureInput, session: Session = Depends(get_session),
                           services: Services = Depends(get_services)):
    checkpoint = _checkpoint(session, checkpoint_id)
    supplied = body.supplied()
    desc = await run_in_threadpool(architecture.describe_file, services.blobs.path(checkpoint.canonical_sha256), supplied)
    with services.writing() as write:
        checkpoints.set_architecture(write, checkpoint_id, supplied, desc)
    checkpoint.architecture_input = supplied
    return _out(checkpoint, desc)


@router.get("/graph", response_model=GraphSummary, summary="GMN parameter graph: JSON summary, or its tensors with format=pt",
            responses={200: {"content": {"application/octet-stream": {}}}})
async def get_graph(
    checkpoint_id: str,
    mode: Literal["scalar", "vector"] = "scalar",
    format: Literal["json", "pt"] = Query("json", description="pt: the graph's tensors, loadable with torch.load(weights_only=True)"),
    session: Session = Depends(get_session),
    services: Services = Depends(get_services),
):
    checkpoint = _checkpoint(session, checkpoint_id)
    row = await run_in_threadpool(architecture.graph, services, checkpoint, mode)
    if format == "pt":
        return FileResponse(services.blobs.path(row.sha256), media_type="application/octet-stream",
                            filename=f"{checkpoint_id}-{mode}-graph.pt", headers={"ETag": f'"sha256:{row.sha256}"'})
    return GraphSummary(checkpoint_id=checkpoint_id, mode=mode, sha256=row.sha256, size=row.size, summary=row.summary)
