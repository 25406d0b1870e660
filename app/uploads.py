"""Receive an upload body (raw or multipart) straight into staged blobs: streamed, hashed, size-limited."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from storage.blobs import LocalBlobStore, StagedBlob
from storage.formats.sharded import check_filename

from .problems import Problem

BATCH = 4 << 20  # hand the disk and the hash 4 MiB at a time, off the event loop
MAX_FIELD_BYTES = 4 << 20
MAX_FILES = 4096
MAX_FIELDS = 64


def too_large(limit: int) -> Problem:
    return Problem(413, "upload-too-large", f"upload exceeds the limit of {limit} bytes (WEIGHTSCOPE_MAX_UPLOAD_BYTES)", title="Upload too large")


@dataclass
class ReceivedFile:
    filename: str | None
    staged: StagedBlob


@dataclass
class Received:
    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    size: int = 0

    def discard(self) -> None:
        for f in self.files:
            f.staged.discard()


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)


async def _pump(request: Request, write, limit: int) -> int:
    """Feed the body to `write` in batches on a worker thread while the next batch is received (one batch in
    flight, so memory stays bounded); refuse as soon as the limit is passed."""
    total = pending = 0
    batch: list[bytes] = []
    in_flight: asyncio.Future | None = None
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise too_large(limit)
            batch.append(chunk)
            pending += len(chunk)
            if pending >= BATCH:
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.ensure_future(run_in_threadpool(_write_all, write, batch))
                batch, pending = [], 0
        if in_flight is not None:
            await in_flight
        if batch:
            await run_in_threadpool(_write_all, write, batch)
    except ClientDisconnect:
        raise Problem(400, "incomplete-upload", "the client disconnected before the upload finished") from None
    finally:
        if in_flight is not None and not in_flight.done():
            await asyncio.wait([in_flight])  # never leave a thread writing into a file about to be discarded
    return total


def _write_all(write, chunks: list[bytes]) -> None:
    for chunk in chunks:
        write(chunk)


async def receive_raw(request: Request, store: LocalBlobStore, limit: int, filename: str | None, observe=None) -> Received:
    """Stream the body into one staged blob; `observe(chunk)`, if given, sees every chunk too (same thread)."""
    _check_declared_length(request, limit)
    if filename is not None:
        check_filename(filename)
    received = Received()
    staged = store.staging()
    received.files.append(ReceivedFile(filename, staged))

    def write(chunk: bytes) -> None:
        staged.write(chunk)
        if observe is not None:
            observe(chunk)

    try:
        received.size = await _pump(request, write, limit)
    except BaseException:
        received.discard()
        raise
    return received


class _MultipartSink:
    """python-multipart callbacks: file parts go to staged blobs, small fields to memory."""

    def __init__(self, store: LocalBlobStore, received: Received):
        self.store = store
        self.received = received
        self.headers: dict[bytes, bytes] = {}
        self._field_name = b""
        self._field_value = b""
        self._name: str | None = None
        self._target: StagedBlob | bytearray | None = None
        self.finished = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: setattr(self, "_field_name", self._field_name + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_field_value", self._field_value + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": lambda: setattr(self, "finished", True),
        }

    def _part_begin(self) -> None:
        self.headers, self._target, self._name = {}, None, None

    def _header_end(self) -> None:
        self.headers[self._field_name.lower()] = self._field_value
        self._field_name, self._field_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if len(self.received.files) >= MAX_FILES:
                raise Problem(413, "too-many-files", f"a multipart upload may hold at most {MAX_FILES} files")
            filename = check_filename(options[b"filename"].decode("utf-8", "replace"))
            staged = self.store.staging()
            self.received.files.append(ReceivedFile(filename, staged))
            self._target = staged
        else:
            if len(self.received.fields) >= MAX_FIELDS:
                raise Problem(413, "too-many-fields", f"a multipart upload may hold at most {MAX_FIELDS} fields")
            self._name, self._target = name, bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if isinstance(self._target, bytearray):
            if len(self._target) + end - start > MAX_FIELD_BYTES:
                raise Problem(413, "field-too-large", f"form field {self._name!r} exceeds {MAX_FIELD_BYTES} bytes")
            self._target += data[start:end]
        elif self._target is not None:
            self._target.write(memoryview(data)[start:end])

    def _part_end(self) -> None:
        if isinstance(self._target, bytearray) and self._name:
            self.received.fields[self._name] = self._target.decode("utf-8", "replace")


async def receive_multipart(request: Request, store: LocalBlobStore, limit: int) -> Received:
    _check_declared_length(request, limit)
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise Problem(400, "invalid-multipart", "multipart/form-data upload has no boundary")
    received = Received()
    sink = _MultipartSink(store, received)
    parser = MultipartParser(boundary, sink.callbacks())
    try:
        received.size = await _pump(request, parser.write, limit)
        parser.finalize()
        if not sink.finished:
            raise Problem(400, "invalid-multipart", "multipart body ended before its closing boundary")
    except MultipartParseError as exc:
        received.discard()
        raise Problem(400, "invalid-multipart", f"multipart body is malformed: {exc}") from None
    except BaseException:
        received.discard()
        raise
    return received
