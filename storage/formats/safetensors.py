"""safetensors: strict header validation, chunked tensor reads and a streaming writer.

Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes (row-major, little-endian).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import torch

from .errors import InvalidCheckpoint

MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 1_000_000
MAX_NAME_LENGTH = 1024
ALIGNMENT = 8

# safetensors dtype -> (torch dtype, bytes per element). Anything else is refused.
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "I16": (torch.int16, 2),
    "I32": (torch.int32, 4),
    "I64": (torch.int64, 8),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
}
TORCH_TO_DTYPE = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header entry; `begin`/`end` are absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]


@dataclass(frozen=True)
class Header:
    tensors: list[TensorEntry]  # in file order
    metadata: dict[str, str]
    data_start: int


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidCheckpoint(f"invalid safetensors: duplicate tensor name {key!r} in header")
        seen[key] = value
    return seen


def _non_negative_ints(value: object) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def read_header(f: BinaryIO, file_size: int) -> Header:
    """Validate the header against the file size before any tensor byte is trusted."""
    if file_size < 8:
        raise InvalidCheckpoint(f"invalid safetensors: file is {file_size} bytes, shorter than the 8-byte header length")
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
        raise InvalidCheckpoint(f"invalid safetensors: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if n > file_size - 8:
        raise InvalidCheckpoint(f"invalid safetensors: header length {n} exceeds the {file_size - 8} bytes after it")
    raw = f.read(n)
    if not raw.startswith(b"{"):
        raise InvalidCheckpoint("invalid safetensors: header does not start with '{'")
    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCheckpoint(f"invalid safetensors: header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise InvalidCheckpoint("invalid safetensors: header is not a JSON object")

    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidCheckpoint("invalid safetensors: __metadata__ must map strings to strings")
    if len(parsed) > MAX_TENSORS:
        raise InvalidCheckpoint(f"invalid safetensors: {len(parsed)} tensors exceed the limit of {MAX_TENSORS}")

    data_start = 8 + n
    data_size = file_size - data_start
    entries = [_entry(name, info, data_start) for name, info in parsed.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    cursor = data_start
    for entry in entries:
        if entry.begin != cursor:
            problem = "overlaps the previous tensor" if entry.begin < cursor else "leaves a gap before it"
            raise InvalidCheckpoint(
                f"invalid safetensors: tensor {entry.name!r} starts at byte {entry.begin - data_start}, which {problem}"
            )
        cursor = entry.end
    if cursor - data_start != data_size:
        raise InvalidCheckpoint(
            f"invalid safetensors: tensors cover {cursor - data_start} bytes but the data section is {data_size} bytes"
        )
    return Header(entries, dict(metadata), data_start)


def _entry(name: str, info: object, data_start: int) -> TensorEntry:
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidCheckpoint(f"invalid safetensors: tensor name of length {len(name)} (must be 1..{MAX_NAME_LENGTH})")
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise InvalidCheckpoint(f"invalid safetensors: tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPES:
        raise InvalidCheckpoint(
            f"invalid safetensors: tensor {name!r} has dtype {dtype!r}, not one of {', '.join(DTYPES)}"
        )
    if not _non_negative_ints(shape):
        raise InvalidCheckpoint(f"invalid safetensors: tensor {name!r} has a shape that is not a list of non-negative integers")
    if not _non_negative_ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise InvalidCheckpoint(f"invalid safetensors: tensor {name!r} has data_offsets that are not [begin, end] with begin <= end")
    expected = math.prod(shape) * DTYPES[dtype][1]
    if offsets[1] - offsets[0] != expected:
        raise InvalidCheckpoint(
            f"invalid safetensors: tensor {name!r} of shape {shape} and dtype {dtype} needs {expected} bytes, "
            f"but its offsets span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def read_header_at(path: str | os.PathLike) -> Header:
    with open(path, "rb") as f:
        return read_header(f, os.fstat(f.fileno()).st_size)


def iter_chunks(f: BinaryIO, entry: TensorEntry, max_bytes: int = 64 << 20) -> Iterator[torch.Tensor]:
    """Yield the tensor's elements as flat 1-D tensors of at most `max_bytes`, reading with pread:
    memory stays bounded and page-cache pages never count as the process's own."""
    itemsize = DTYPES[entry.dtype][1]
    step = max(itemsize, (max_bytes // itemsize) * itemsize)
    offset = entry.begin
    while offset < entry.end:
        size = min(step, entry.end - offset)
        buffer = bytearray(size)
        got = os.preadv(f.fileno(), [buffer], offset)
        if got != size:
            raise InvalidCheckpoint(f"invalid safetensors: file ended inside tensor {entry.name!r}")
        yield torch.frombuffer(buffer, dtype=entry.torch_dtype)
        offset += size


def load_tensor(f: BinaryIO, entry: TensorEntry) -> torch.Tensor:
    """Read one whole tensor (copying), shaped."""
    buffer = bytearray(entry.end - entry.begin)
    if buffer:
        os.preadv(f.fileno(), [buffer], entry.begin)
    return torch.frombuffer(buffer, dtype=entry.torch_dtype).reshape(entry.shape) if buffer else torch.empty(
        entry.shape, dtype=entry.torch_dtype
    )


def header_bytes(specs: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None) -> bytes:
    """Serialise a header for tensors written back to back in the given order, padded to 8 bytes."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in specs:
        size = math.prod(shape) * DTYPES[dtype][1]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Little-endian row-major bytes of a CPU tensor, without copying when already contiguous."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def write(out, tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> None:
    """Stream a safetensors file to anything with `.write`, one tensor at a time."""
    specs = []
    for name, tensor in tensors:
        if tensor.dtype not in TORCH_TO_DTYPE:
            raise InvalidCheckpoint(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold here")
        specs.append((name, TORCH_TO_DTYPE[tensor.dtype], tuple(tensor.shape)))
    out.write(header_bytes(specs, metadata))
    for _, tensor in tensors:
        out.write(tensor_bytes(tensor))


def copy_tensor_bytes(src: BinaryIO, entry: TensorEntry, out, chunk: int = 16 << 20) -> None:
    """Copy one tensor's raw bytes from a validated file to `out`."""
    offset = entry.begin
    while offset < entry.end:
        size = min(chunk, entry.end - offset)
        data = os.pread(src.fileno(), size, offset)
        if len(data) != size:
            raise InvalidCheckpoint(f"invalid safetensors: file ended inside tensor {entry.name!r}")
        out.write(data)
        offset += size
