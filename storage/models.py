"""SQLAlchemy 2 models: checkpoints, their files and tensors, jobs and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON, list: JSON}


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(255))
    run: Mapped[str | None] = mapped_column(String(255))
    step: Mapped[int | None] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    canonical_sha256: Mapped[str] = mapped_column(String(64))
    tensor_count: Mapped[int] = mapped_column(Integer)
    parameter_count: Mapped[int] = mapped_column(BigInteger)
    dtypes: Mapped[list] = mapped_column(default=list)
    file_metadata: Mapped[dict] = mapped_column(default=dict)
    tied: Mapped[list] = mapped_column(default=list)
    architecture_input: Mapped[dict | None] = mapped_column()  # hints and/or declarative JSON from the user
    architecture: Mapped[dict | None] = mapped_column()  # cached description (carries its converter_version)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    files: Mapped[list[CheckpointFile]] = relationship(
        back_populates="checkpoint", cascade="all, delete-orphan", passive_deletes=True, order_by="CheckpointFile.position"
    )
    tag_rows: Mapped[list[CheckpointTag]] = relationship(cascade="all, delete-orphan", passive_deletes=True, lazy="selectin")
    tensors: Mapped[list[TensorRecord]] = relationship(
        back_populates="checkpoint", cascade="all, delete-orphan", passive_deletes=True, order_by="TensorRecord.position"
    )

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]

    __table_args__ = (
        Index("ix_checkpoints_created", "created_at", "id"),
        Index("ix_checkpoints_run", "run"),
        Index("ix_checkpoints_name", "name"),
        Index("ix_checkpoints_sha256", "sha256"),
    )


class CheckpointTag(Base):
    __tablename__ = "checkpoint_tags"

    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)


class CheckpointFile(Base):
    """An uploaded file, kept bit-exact as a blob; several for a sharded checkpoint."""

    __tablename__ = "checkpoint_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)

    checkpoint: Mapped[Checkpoint] = relationship(back_populates="files")

    __table_args__ = (UniqueConstraint("checkpoint_id", "filename"),)


class TensorRecord(Base):
    """One tensor of a checkpoint with the statistics computed at ingest."""

    __tablename__ = "tensors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(1024))
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[list] = mapped_column()
    numel: Mapped[int] = mapped_column(BigInteger)
    mean: Mapped[float | None] = mapped_column(Float(53))
    std: Mapped[float | None] = mapped_column(Float(53))
    min: Mapped[float | None] = mapped_column(Float(53))
    max: Mapped[float | None] = mapped_column(Float(53))
    l2_norm: Mapped[float | None] = mapped_column(Float(53))
    zero_fraction: Mapped[float | None] = mapped_column(Float(53))
    nan_count: Mapped[int] = mapped_column(BigInteger)
    inf_count: Mapped[int] = mapped_column(BigInteger)

    checkpoint: Mapped[Checkpoint] = relationship(back_populates="tensors")

    __table_args__ = (Index("ix_tensors_checkpoint", "checkpoint_id", "position"),)


class GraphBlob(Base):
    """A parameter graph built for a checkpoint, cached as a blob per converter version and mode."""

    __tablename__ = "graph_blobs"

    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True)
    converter_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    summary: Mapped[dict] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """The source of truth for background work; executors only ever receive a job id."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(64))
    checkpoint_id: Mapped[str | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"))
    params: Mapped[dict] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[dict | None] = mapped_column()
    error: Mapped[dict | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_jobs_claim", "status", "created_at"), Index("ix_jobs_checkpoint", "checkpoint_id"))


class ApiKey(Base):
    """A bearer key, stored only as the sha256 of its secret (keys are random, so no slow hash is needed)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    note: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    """A training run posting telemetry; `version` counts telemetry batches (detector caches compare it)."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    model: Mapped[dict | str | None] = mapped_column(JSON)
    detectors: Mapped[dict] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    probe_sha256: Mapped[str | None] = mapped_column(String(64))  # safetensors with "inputs", for server-side SA
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_runs_created", "created_at", "id"),)


class TelemetryRecord(Base):
    """One (run, step, layer) record; a resent record replaces the earlier one. Non-finite values are kept as
    the strings "NaN", "Infinity", "-Infinity" (JSON has no NaN) and flagged."""

    __tablename__ = "telemetry"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    layer: Mapped[str] = mapped_column(String(512), primary_key=True)
    metrics: Mapped[dict] = mapped_column()
    nonfinite: Mapped[bool] = mapped_column(default=False)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunWarning(Base):
    """A detector warning. `seq` orders warnings for cursors; (run, key) makes re-detection idempotent."""

    __tablename__ = "run_warnings"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    step: Mapped[int] = mapped_column(BigInteger)
    layers: Mapped[list] = mapped_column()
    detector: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    values: Mapped[dict] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("run_id", "key"), Index("ix_run_warnings_cursor", "run_id", "seq"))


class Zoo(Base):
    """A named set of checkpoints with labels: given from stored checkpoints, or generated from a recipe by a job."""

    __tablename__ = "zoos"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # generating | ready | failed
    recipe: Mapped[dict | None] = mapped_column()
    job_id: Mapped[str | None] = mapped_column(String(32))
    summary: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ZooMember(Base):
    __tablename__ = "zoo_members"

    zoo_id: Mapped[str] = mapped_column(ForeignKey("zoos.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True)
    group: Mapped[str] = mapped_column(String(255))  # all checkpoints of one training run share a split side
    labels: Mapped[dict] = mapped_column()


class Metanet(Base):
    """A metanetwork trained on a zoo; its weights are a safetensors blob."""

    __tablename__ = "metanets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    zoo_id: Mapped[str] = mapped_column(ForeignKey("zoos.id", ondelete="CASCADE"), index=True)
    target: Mapped[str] = mapped_column(String(255))
    task: Mapped[str] = mapped_column(String(16))
    hyperparameters: Mapped[dict] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16))  # training | ready | failed
    job_id: Mapped[str | None] = mapped_column(String(32))
    weights_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    config: Mapped[dict | None] = mapped_column()
    metrics: Mapped[dict | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
