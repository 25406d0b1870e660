"""Checkpoint file formats: detect by magic bytes, validate, and present every file as safetensors."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import safetensors
from .errors import (
    CheckpointRejected,
    EmptyUpload,
    InvalidBundle,
    InvalidCheckpoint,
    UnsafeCheckpoint,
    UnsupportedFormat,
)
from .torch_zip import check_zip, load_to_safetensors

__all__ = [
    "CheckpointRejected", "EmptyUpload", "InvalidBundle", "InvalidCheckpoint", "UnsafeCheckpoint",
    "UnsupportedFormat", "TensorFile", "detect", "open_tensor_file", "safetensors",
]


@dataclass
class TensorFile:
    """A validated upload as safetensors: `path` is the original (safetensors) or a converted copy (PyTorch)."""

    format: str
    path: Path
    header: safetensors.Header
    metadata: dict = field(default_factory=dict)
    tied: list[list[str]] = field(default_factory=list)
    converted: bool = False


def detect(path: Path, filename: str | None = None) -> str:
    """'safetensors' or 'pytorch' by content; refuse legacy pickles and unknown bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise EmptyUpload("upload is empty")
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "pytorch"
    if head.startswith((b"PK\x05\x06", b"PK\x07\x08")):
        raise UnsupportedFormat("zip file is empty or spanned, not a PyTorch checkpoint")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise UnsupportedFormat(
            "legacy (non-zip) PyTorch pickle refused: re-save with torch.save (zip format) or convert to safetensors"
        )
    if (filename or "").endswith(".safetensors") or len(head) < 9:
        return "safetensors"  # validation below names what is wrong with it
    raise UnsupportedFormat("unrecognised file format: expected safetensors or a PyTorch zip (.pt, .pth, .bin, .ckpt)")


def open_tensor_file(path: Path, filename: str | None, workdir: Path, max_unpacked: int) -> TensorFile:
    """Validate one uploaded file; PyTorch files are converted to safetensors in `workdir` by the sandbox."""
    kind = detect(path, filename)
    if kind == "safetensors":
        with open(path, "rb") as f:
            header = safetensors.read_header(f, os.fstat(f.fileno()).st_size)
        return TensorFile("safetensors", path, header, dict(header.metadata))
    check_zip(path, max_unpacked)
    dest = workdir / f"{path.name}.converted.safetensors"
    try:
        loaded = load_to_safetensors(path, dest)
        header = safetensors.read_header_at(dest)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return TensorFile("pytorch", dest, header, _json_safe(loaded.metadata), loaded.tied, converted=True)


def _json_safe(metadata: dict) -> dict:
    """Non-finite floats become strings so the metadata stays valid JSON in every database."""
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in metadata.items()}
