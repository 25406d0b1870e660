"""safetensors: strict header validation, chunked tensor reads and a streaming writer.

Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes (row-major, little-endian).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from .errors import InvalidCheckpoint

MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 1_000_000
MAX_NAME_LENGTH = 1024
ALIGNMENT = 8

# safetensors dtype -> (torch dtype name, bytes per element). Anything else is refused. Kept free of torch so
# the API process never imports it; torch is needed only to write tensors (sandboxed loader, tests).
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "I16": ("int16", 2),
    "I32": ("int32", 4),
    "I64": ("int64", 8),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
_NUMPY = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
          "F16": np.float16, "F32": np.float32, "F64": np.float64}


def dtype_name(torch_dtype) -> str | None:
    """The safetensors name of a torch dtype, or None if we do not store it."""
    wanted = str(torch_dtype).removeprefix("torch.")
    return next((name for name, (t, _) in DTYPES.items() if t == wanted), None)


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
    n = header_length(f.read(8))
    if n > file_size - 8:
        raise InvalidCheckpoint(f"invalid safetensors: header length {n} exceeds the {file_size - 8} bytes after it")
    header = parse_header(f.read(n))
    data_size = file_size - header.data_start
    covered = (header.tensors[-1].end if header.tensors else header.data_start) - header.data_start
    if covered != data_size:
        raise InvalidCheckpoint(f"invalid safetensors: tensors cover {covered} bytes but the data section is {data_size} bytes")
    return header


def header_length(prefix: bytes) -> int:
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise InvalidCheckpoint(f"invalid safetensors: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    return n


def parse_header(raw: bytes) -> Header:
    """Parse and check the JSON header (names, dtypes, shapes, contiguous offsets); the file size is checked apart."""
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

    data_start = 8 + len(raw)
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
    return Header(entries, dict(metadata), data_start)


class StreamDecoder:
    """Decode a safetensors byte stream as it arrives: once the header is in, `feed` yields (entry, values)
    pieces in file order, so statistics need no second pass over the file. A stream that cannot be decoded
    sets `failed` and yields nothing more; the file is then validated (with its exact error) after upload."""

    def __init__(self) -> None:
        self.header: Header | None = None
        self.failed = False
        self.position = 0  # bytes consumed
        self._head = bytearray()
        self._index = 0
        self._carry = b""  # bytes of an element split across two chunks

    @property
    def complete(self) -> bool:
        """True when the stream ended exactly at the end of the last tensor."""
        return not self.failed and self.header is not None and self.position == (
            self.header.tensors[-1].end if self.header.tensors else self.header.data_start
        )

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[TensorEntry, np.ndarray]]:
        if self.failed:
            return
        data = memoryview(data)
        while self.header is None and len(data):
            try:
                need = 8 if len(self._head) < 8 else 8 + header_length(bytes(self._head[:8]))
                take = min(need - len(self._head), len(data))
                self._head += data[:take]
                self.position += take
                data = data[take:]
                if len(self._head) >= 8 and len(self._head) == 8 + header_length(bytes(self._head[:8])):
                    self.header = parse_header(bytes(self._head[8:]))
                    self._head = bytearray()
            except InvalidCheckpoint:
                self.failed = True
                return
        entries = self.header.tensors if self.header else []
        while len(data) and self._index < len(entries):
            entry = entries[self._index]
            take = min(entry.end - self.position, len(data))
            piece, data = data[:take], data[take:]
            self.position += take
            itemsize = DTYPES[entry.dtype][1]
            raw = self._carry + bytes(piece) if self._carry else piece
            whole = len(raw) - len(raw) % itemsize
            if whole:
                yield entry, decode(np.frombuffer(raw, dtype=np.uint8, count=whole), entry.dtype)
            self._carry = bytes(raw[whole:])
            if self.position == entry.end:
                self._index += 1
        if len(data):  # bytes past the last tensor: the post-upload validation will name the problem
            self.failed = True


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


@lru_cache(maxsize=None)
def _f8_e4m3fn_table() -> np.ndarray:
    """float32 value of every e4m3fn byte: bias 7, 3 mantissa bits, no infinities, 0x7f/0xff are NaN."""
    values = np.empty(256, dtype=np.float32)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
        if exponent == 0xF and mantissa == 0x7:
            values[byte] = np.nan
        elif exponent == 0:
            values[byte] = sign * mantissa / 8 * 2.0**-6
        else:
            values[byte] = sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)
    return values


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """View raw little-endian bytes (uint8 array) as numbers; bf16 and fp8 widen to float32 exactly."""
    if dtype in _NUMPY:
        return raw.view(_NUMPY[dtype])
    if dtype == "BF16":  # the top half of a float32
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == "F8_E5M2":  # the top byte of a float16
        return (raw.astype(np.uint16) << 8).view(np.float16)
    return _f8_e4m3fn_table()[raw]


def iter_chunks(f: BinaryIO, entry: TensorEntry, max_bytes: int = 1 << 18) -> Iterator[np.ndarray]:
    """Yield the tensor's elements as flat numpy chunks, read with pread into one reused buffer: memory stays
    bounded and small, and page-cache pages never count as the process's own. Each chunk is valid only until
    the next one is produced."""
    itemsize = DTYPES[entry.dtype][1]
    step = max(itemsize, (max_bytes // itemsize) * itemsize)
    buffer = np.empty(min(step, entry.end - entry.begin), dtype=np.uint8)
    offset = entry.begin
    while offset < entry.end:
        size = min(step, entry.end - offset)
        view = buffer[:size]
        if os.preadv(f.fileno(), [view], offset) != size:
            raise InvalidCheckpoint(f"invalid safetensors: file ended inside tensor {entry.name!r}")
        yield decode(view, entry.dtype)
        offset += size


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


def tensor_bytes(tensor) -> memoryview:
    """Little-endian row-major bytes of a CPU torch tensor, without copying when already contiguous."""
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def write(out, tensors: list, metadata: dict[str, str] | None = None) -> None:
    """Stream (name, torch tensor) pairs as a safetensors file to anything with `.write`, one tensor at a time."""
    specs = []
    for name, tensor in tensors:
        name_of_dtype = dtype_name(tensor.dtype)
        if name_of_dtype is None:
            raise InvalidCheckpoint(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold here")
        specs.append((name, name_of_dtype, tuple(tensor.shape)))
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
