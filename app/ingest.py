"""Turn received files into a stored checkpoint: validate, convert to one canonical safetensors, compute
per-tensor statistics, then commit blobs and rows. Any refusal discards every staged byte."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metanets.tensor_stats import StatsAccumulator
from storage import checkpoints as checkpoint_rows
from storage.blobs import StagedBlob
from storage.formats import EmptyUpload, InvalidBundle, TensorFile, open_tensor_file, safetensors
from storage.formats.sharded import is_index, parse_index, check_bundle
from storage.models import Checkpoint, CheckpointFile, TensorRecord

from .architecture import describe_file
from .services import Services
from .uploads import Received, ReceivedFile

STATS_CHUNK_BYTES = 1 << 18  # small chunks stay in cache and in malloc's reused memory


@dataclass
class UploadMeta:
    name: str | None = None
    run: str | None = None
    step: int | None = None
    tags: list[str] = field(default_factory=list)
    architecture: dict | None = None  # hints and/or declarative description, checked against the weights


class StreamingStats:
    """Per-tensor statistics of a safetensors upload, computed while its bytes stream in (no second pass)."""

    def __init__(self) -> None:
        self.decoder = safetensors.StreamDecoder()
        self.accumulators: dict[str, StatsAccumulator] = {}

    def feed(self, data: bytes) -> None:
        for entry, values in self.decoder.feed(data):
            acc = self.accumulators.get(entry.name)
            if acc is None:
                acc = self.accumulators[entry.name] = StatsAccumulator()
            acc.update(values)

    def result(self, header: safetensors.Header) -> dict[str, StatsAccumulator] | None:
        """The accumulators, if the stream decoded completely and its header is the one validated on disk."""
        if not self.decoder.complete or self.decoder.header.tensors != header.tensors:
            return None
        return {e.name: self.accumulators.get(e.name) or StatsAccumulator() for e in header.tensors}


def ingest(services: Services, received: Received, meta: UploadMeta, streamed: StreamingStats | None = None) -> Checkpoint:
    """Validate and store; on any failure nothing is left behind (no blob, no row)."""
    converted: list[Path] = []
    try:
        return _ingest(services, received, meta, converted, streamed)
    finally:
        received.discard()  # committed blobs were moved away; this drops only what is still staged
        for path in converted:
            path.unlink(missing_ok=True)


def _ingest(services: Services, received: Received, meta: UploadMeta, scratch: list[Path], streamed: StreamingStats | None) -> Checkpoint:
    files = received.files
    if not files or received.size == 0:
        raise EmptyUpload("upload is empty")
    for f in files:
        if f.staged.finish_writing().size == 0:
            raise EmptyUpload(f"file {f.filename!r} is empty" if f.filename else "upload is empty")
    indexes = [f for f in files if f.filename and is_index(f.filename)]
    shards = [f for f in files if f not in indexes]
    if len(indexes) > 1:
        raise InvalidBundle("a sharded upload may hold only one *.index.json file")
    if not indexes and len(shards) > 1:
        raise InvalidBundle("several files need a model.safetensors.index.json naming each shard")
    if not shards:
        raise InvalidBundle("upload holds an index but no weight files")

    workdir = services.blobs.tmp_dir
    max_unpacked = 4 * services.settings.max_upload_bytes
    opened: list[tuple[ReceivedFile, TensorFile]] = []
    for f in shards:
        tensor_file = open_tensor_file(f.staged.path, f.filename, workdir, max_unpacked)
        if tensor_file.converted:
            scratch.append(tensor_file.path)
        opened.append((f, tensor_file))

    if indexes:
        index = parse_index(indexes[0].staged.path.read_bytes())
        check_bundle(index, {f.filename: {e.name for e in tf.header.tensors} for f, tf in opened})
        merged = _merge(services, opened)
        scratch.append(merged.path)
        canonical, metadata, tied, fmt = merged.path, {"index": index.metadata}, [], "hf-sharded"
    else:
        f, tf = opened[0]
        canonical, metadata, tied, fmt = tf.path, tf.metadata, tf.tied, tf.format

    header = safetensors.read_header_at(canonical)
    ready = streamed.result(header) if streamed is not None and fmt == "safetensors" else None
    tensor_rows = _tensor_rows(canonical, header, ready)
    description = describe_file(canonical, meta.architecture) if meta.architecture else None

    originals = [f.staged.commit() for f in files]
    if fmt == "safetensors":
        canonical_digest = originals[0].sha256  # the upload is its own canonical form
    elif fmt == "hf-sharded":
        canonical_digest = merged.commit().sha256
    else:
        canonical_digest = services.blobs.put_file(canonical).sha256
    sha256 = originals[0].sha256 if len(files) == 1 else canonical_digest

    checkpoint = Checkpoint(
        name=meta.name,
        run=meta.run,
        step=meta.step,
        format=fmt,
        sha256=sha256,
        size=sum(info.size for info in originals),
        canonical_sha256=canonical_digest,
        tensor_count=len(tensor_rows),
        parameter_count=sum(r.numel for r in tensor_rows),
        dtypes=sorted({r.dtype for r in tensor_rows}),
        file_metadata=metadata,
        tied=tied,
        architecture_input=meta.architecture,
        architecture=description,
    )
    file_rows = [
        CheckpointFile(position=i, filename=f.filename or _default_filename(fmt), sha256=info.sha256, size=info.size)
        for i, (f, info) in enumerate(zip(files, originals))
    ]
    with services.writing() as session:
        checkpoint_rows.add(session, checkpoint, file_rows, tensor_rows, meta.tags)
    return checkpoint


def _default_filename(fmt: str) -> str:
    return "model.safetensors" if fmt == "safetensors" else "model.pt"


def _tensor_rows(path: Path, header: safetensors.Header, ready: dict[str, StatsAccumulator] | None) -> list[TensorRecord]:
    """One row per tensor with its statistics: from the stream when it decoded, else from a pass over the file."""
    rows = []
    with open(path, "rb") as f:
        for position, entry in enumerate(header.tensors):
            if ready is not None:
                acc = ready[entry.name]
            else:
                acc = StatsAccumulator()
                for chunk in safetensors.iter_chunks(f, entry, STATS_CHUNK_BYTES):
                    acc.update(chunk)
            stats = acc.result()
            rows.append(
                TensorRecord(position=position, name=entry.name, dtype=entry.dtype, shape=list(entry.shape), numel=entry.numel, **stats.as_dict())
            )
    return rows


def _merge(services: Services, opened: list[tuple[ReceivedFile, TensorFile]]) -> StagedBlob:
    """Concatenate the shards into one canonical safetensors file (shard order, then file order)."""
    staged = services.blobs.staging()
    entries = [(tf, entry) for _, tf in opened for entry in tf.header.tensors]
    staged.write(safetensors.header_bytes([(e.name, e.dtype, e.shape) for _, e in entries], None))
    for tf, entry in entries:
        with open(tf.path, "rb") as src:
            safetensors.copy_tensor_bytes(src, entry, staged)
    staged.finish_writing()
    return staged
