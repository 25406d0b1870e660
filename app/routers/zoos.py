"""/v1/zoos and /v1/metanets: labelled checkpoint sets, metanetworks trained on them as jobs, and predictions."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from storage import jobs, zoos

from .. import zoos as zoo_service
from ..observability import JOBS_SUBMITTED
from ..problems import not_found
from ..schemas import JobOut, _Out
from ..services import Services, get_services, get_session

router = APIRouter(tags=["metanetworks"])


class ZooMemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint_id: str
    labels: dict[str, Any] = Field(description="e.g. {\"test_accuracy\": 0.91}")
    group: str | None = Field(None, description="training run: members of one group stay on one side of every split")


class ZooIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    members: list[ZooMemberIn] | None = Field(None, max_length=100_000)
    recipe: dict[str, Any] | None = Field(None, examples=[{"kind": "small_cnn_digits", "size": 50, "seed": 0}],
                                          description="generate server-side: kind small_cnn_digits or siren_digits, size, seed, ...")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.members is None) == (self.recipe is None):
            raise ValueError("give exactly one of members or recipe")
        return self


class ZooOut(_Out):
    id: str
    name: str
    status: str
    recipe: dict[str, Any] | None
    job_id: str | None
    summary: dict[str, Any]
    created_at: Any


class ZooCreated(BaseModel):
    zoo: ZooOut
    job: JobOut | None


class MetanetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["gmn", "unf", "statnn"]
    zoo: str = Field(description="zoo id")
    target: str = Field(description="the label to predict, e.g. test_accuracy or digit")
    task: Literal["regression", "classification"] | None = Field(None, description="default: regression for numeric labels")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    name: str | None = Field(None, max_length=255)


class MetanetOut(_Out):
    id: str
    name: str | None
    kind: str
    zoo_id: str
    target: str
    task: str
    hyperparameters: dict[str, Any]
    status: str
    job_id: str | None
    metrics: dict[str, Any] | None
    created_at: Any


class MetanetCreated(BaseModel):
    metanet: MetanetOut
    job: JobOut


class MetanetList(BaseModel):
    items: list[MetanetOut]


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint_ids: list[str] = Field(min_length=1, max_length=10_000)


def _submit(request: Request, job) -> JobOut:
    request.app.state.executor.submit(job.id)
    JOBS_SUBMITTED.labels(job.kind).inc()
    return JobOut.model_validate(job)


@router.post("/v1/zoos", status_code=201, response_model=ZooCreated, responses={202: {"model": ZooCreated}}, max_body_size=64 << 20,
             summary="A zoo from stored checkpoints with labels (201), or generated from a recipe as a job (202)")
async def create_zoo(body: ZooIn, request: Request, response: Response, services: Services = Depends(get_services)):
    if body.members is not None:
        zoo = await run_in_threadpool(zoo_service.create_from_checkpoints, services, body.name, [m.model_dump() for m in body.members])
        response.headers["Location"] = f"/v1/zoos/{zoo.id}"
        return ZooCreated(zoo=ZooOut.model_validate(zoo), job=None)
    recipe = await run_in_threadpool(zoo_service.check_recipe, body.recipe)
    with services.writing() as session:
        zoo = zoos.create_zoo(session, body.name, "generating", recipe)
        job = jobs.enqueue(session, "zoo_generate", {"zoo_id": zoo.id, "recipe": recipe}, max_attempts=1)
        zoo.job_id = job.id
    response.status_code = 202
    response.headers["Location"] = f"/v1/zoos/{zoo.id}"
    return ZooCreated(zoo=ZooOut.model_validate(zoo), job=_submit(request, job))


@router.get("/v1/zoos/{zoo_id}", response_model=ZooOut)
def get_zoo(zoo_id: str, session: Session = Depends(get_session)):
    zoo = zoos.get_zoo(session, zoo_id)
    if zoo is None:
        raise not_found("zoo", zoo_id)
    return ZooOut.model_validate(zoo)


@router.post("/v1/metanets", status_code=202, response_model=MetanetCreated, max_body_size=1 << 20,
             summary="Train a metanetwork (gmn, unf or statnn) on a zoo as a job")
async def create_metanet(body: MetanetIn, request: Request, response: Response, services: Services = Depends(get_services)):
    task = await run_in_threadpool(zoo_service.check_training_request, services, body.kind, body.zoo, body.target, body.task, body.hyperparameters)
    with services.writing() as session:
        metanet = zoos.create_metanet(session, name=body.name, kind=body.kind, zoo_id=body.zoo, target=body.target, task=task,
                                      hyperparameters=body.hyperparameters)
        job = jobs.enqueue(session, "metanet_train", {"metanet_id": metanet.id, "seed": body.seed}, max_attempts=1)
        metanet.job_id = job.id
    response.headers["Location"] = f"/v1/metanets/{metanet.id}"
    return MetanetCreated(metanet=MetanetOut.model_validate(metanet), job=_submit(request, job))


@router.get("/v1/metanets", response_model=MetanetList)
def list_metanets(zoo: str | None = None, page_size: int = Query(100, ge=1, le=1000), session: Session = Depends(get_session)):
    return MetanetList(items=[MetanetOut.model_validate(m) for m in zoos.list_metanets(session, zoo, page_size)])


@router.get("/v1/metanets/{metanet_id}", response_model=MetanetOut)
def get_metanet(metanet_id: str, session: Session = Depends(get_session)):
    metanet = zoos.get_metanet(session, metanet_id)
    if metanet is None:
        raise not_found("metanet", metanet_id)
    return MetanetOut.model_validate(metanet)


@router.post("/v1/metanets/{metanet_id}/predict", max_body_size=1 << 20,
             summary="Predictions and embeddings for stored checkpoints; 422 for one the metanetwork cannot take")
async def predict(metanet_id: str, body: PredictIn, request: Request, services: Services = Depends(get_services)):
    return await run_in_threadpool(zoo_service.predict, services, request.app.state.metanets, metanet_id, body.checkpoint_ids)
