"""Content-addressed blob store: bytes are kept once, under the hex sha256 of their content."""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Protocol

CHUNK = 1 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobTooLarge(Exception):
    """The stream exceeded the byte limit while it was being written."""

    def __init__(self, limit: int):
        super().__init__(f"blob exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int


def check_digest(digest: str) -> str:
    """Refuse anything but a lowercase hex sha256: digests become paths."""
    if not _DIGEST.match(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


class BlobStore(Protocol):
    """What the service needs from a blob backend (local folder now, S3-compatible later)."""

    def staging(self) -> "StagedBlob": ...
    def open(self, digest: str) -> BinaryIO: ...
    def path(self, digest: str) -> Path | None: ...
    def exists(self, digest: str) -> bool: ...
    def delete(self, digest: str) -> None: ...
    def digests(self) -> Iterator[tuple[str, float]]: ...
    def sweep_staging(self, older_than: float) -> int: ...


class StagedBlob:
    """A temp file on the store's filesystem, hashed as it is written, committed by atomic rename."""

    def __init__(self, store: "LocalBlobStore", limit: int | None = None):
        self._store = store
        self._limit = limit
        self._hash = hashlib.sha256()
        self.size = 0
        self.path = store.tmp_dir / f"{uuid.uuid4().hex}.part"
        self._file = open(self.path, "xb")
        self.committed: BlobInfo | None = None

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self._limit is not None and self.size > self._limit:
            raise BlobTooLarge(self._limit)
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish_writing(self) -> BlobInfo:
        """Flush and fsync; the file stays staged (readable at `.path`) until commit or discard."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        return BlobInfo(self._hash.hexdigest(), self.size)

    def commit(self) -> BlobInfo:
        """Move into place under its digest; if those bytes are already stored, keep the old copy."""
        info = self.finish_writing()
        self.committed = info
        self._store.adopt(self.path, info.sha256)
        return info

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "StagedBlob":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.discard()


class LocalBlobStore:
    """Blobs under `root/sha256/ab/cd/<digest>`; staging files under `root/tmp` (same filesystem)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blob_dir = self.root / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        check_digest(digest)
        return self.blob_dir / digest[:2] / digest[2:4] / digest

    def staging(self, limit: int | None = None) -> StagedBlob:
        return StagedBlob(self, limit)

    def put(self, stream: BinaryIO | Iterable[bytes], limit: int | None = None) -> BlobInfo:
        """Store a stream of bytes (file object or iterable of chunks) and return its digest and size."""
        chunks = iter(lambda: stream.read(CHUNK), b"") if hasattr(stream, "read") else stream
        with self.staging(limit) as staged:
            for chunk in chunks:
                staged.write(chunk)
            return staged.commit()

    def put_file(self, path: Path) -> BlobInfo:
        """Hash a finished file that lies in `tmp_dir` and move it into place (no copy)."""
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
            os.fsync(f.fileno())
        info = BlobInfo(digest.hexdigest(), size)
        self.adopt(path, info.sha256)
        return info

    def adopt(self, staged_path: Path, digest: str) -> None:
        """Atomically move a staged file into place; a duplicate is dropped and the original's mtime
        refreshed, so garbage collection's grace period protects it until the new row commits."""
        final = self._path(digest)
        if final.exists():
            staged_path.unlink(missing_ok=True)
            os.utime(final)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_path, final)
        _fsync_dir(final.parent)

    def open(self, digest: str) -> BinaryIO:
        return open(self._path(digest), "rb")

    def path(self, digest: str) -> Path | None:
        return self._path(digest)

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def size(self, digest: str) -> int:
        return self._path(digest).stat().st_size

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[tuple[str, float]]:
        """Every stored digest with its modification time."""
        for path in self.blob_dir.glob("??/??/*"):
            if _DIGEST.match(path.name):
                yield path.name, path.stat().st_mtime

    def sweep_staging(self, older_than: float) -> int:
        """Remove staging files untouched for `older_than` seconds (left by crashed uploads)."""
        cutoff = time.time() - older_than
        removed = 0
        for path in self.tmp_dir.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def writable(self) -> bool:
        probe = self.tmp_dir / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
