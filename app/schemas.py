"""Pydantic response and request bodies of the public API."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @field_serializer("*", when_used="json", check_fields=False)
    def _utc(self, value):
        # SQLite hands back naive datetimes; all stored times are UTC.
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class FileOut(_Out):
    filename: str
    sha256: str
    size: int


class CheckpointOut(_Out):
    id: str
    name: str | None
    run: str | None
    step: int | None
    tags: list[str]
    format: Literal["safetensors", "pytorch", "hf-sharded"]
    sha256: str = Field(description="sha256 of the uploaded file; of the canonical merged safetensors for sharded uploads")
    size: int = Field(description="bytes uploaded (all files)")
    canonical_sha256: str = Field(description="sha256 of the safetensors file analyses read")
    tensor_count: int
    parameter_count: int = Field(description="elements over all tensors (parameters and buffers)")
    dtypes: list[str]
    files: list[FileOut]
    metadata: dict[str, Any] = Field(validation_alias="file_metadata")
    tied: list[list[str]] = Field(description="names that shared storage in the uploaded PyTorch file")
    created_at: datetime


class CheckpointPage(BaseModel):
    items: list[CheckpointOut]
    next_page_token: str | None


class TensorOut(_Out):
    name: str
    dtype: str
    shape: list[int]
    numel: int
    mean: float | None
    std: float | None = Field(description="population standard deviation of the finite values")
    min: float | None
    max: float | None
    l2_norm: float | None
    zero_fraction: float | None
    nan_count: int
    inf_count: int


class TensorList(BaseModel):
    checkpoint_id: str
    items: list[TensorOut]


class AnalysisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(examples=["weight_spectra"])
    params: dict[str, Any] = Field(default_factory=dict)


class JobOut(_Out):
    id: str
    kind: str
    checkpoint_id: str | None
    params: dict[str, Any]
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float
    attempts: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
