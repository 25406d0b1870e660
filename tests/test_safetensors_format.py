"""The safetensors boundary: our writer round-trips through the reference reader, and the validator refuses
every malformed header with a message naming the problem."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings, strategies as st

from storage.formats import InvalidCheckpoint, safetensors as stf

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.uint8, torch.bool]


@st.composite
def state_dicts(draw):
    n = draw(st.integers(1, 5))
    out = {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        t = torch.randn(shape, dtype=torch.float64) * 10
        out[f"t{i}.w"] = (t > 0) if dtype == torch.bool else t.to(dtype)
    return out


@settings(max_examples=60, deadline=None)
@given(state_dicts())
def test_writer_round_trips_through_reference_reader(tensors):
    buf = io.BytesIO()
    stf.write(buf, list(tensors.items()), {"format": "pt"})
    loaded = safetensors.torch.load(buf.getvalue())
    assert list(loaded) == list(tensors) or set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


@settings(max_examples=60, deadline=None)
@given(state_dicts())
def test_validator_accepts_reference_files_and_reads_exact_bytes(tmp_path_factory, tensors):
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"k": "v"})
    header = stf.read_header_at(path)
    assert header.metadata == {"k": "v"}
    with open(path, "rb") as f:
        for entry in header.tensors:
            expected = tensors[entry.name]
            assert entry.shape == tuple(expected.shape) and entry.dtype == stf.dtype_name(expected.dtype)
            chunks = [chunk.copy() for chunk in stf.iter_chunks(f, entry, max_bytes=8)]
            joined = np.concatenate(chunks) if chunks else np.empty(0)
            want = expected.reshape(-1).to(torch.float64).numpy()
            assert np.array_equal(joined.astype(np.float64), want)


def _file(header: dict | bytes, data: bytes = b"", declared: int | None = None) -> io.BytesIO:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if declared is None else declared
    return io.BytesIO(struct.pack("<Q", n) + raw + data)


def _check(f: io.BytesIO, message: str) -> None:
    size = len(f.getvalue())
    with pytest.raises(InvalidCheckpoint, match=message):
        stf.read_header(f, size)


def test_refuses_file_shorter_than_length_prefix():
    _check(io.BytesIO(b"\x01\x02"), "shorter than the 8-byte header length")


def test_refuses_header_longer_than_file():
    _check(_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, declared=10_000), "exceeds the .* bytes after it")


def test_refuses_header_over_limit():
    _check(_file(b"{}", declared=stf.MAX_HEADER_BYTES + 1), "exceeds the limit of 100000000 bytes")


def test_refuses_invalid_json():
    _check(_file(b'{"a": [1, 2'), "not valid UTF-8 JSON")


def test_refuses_duplicate_names():
    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    _check(_file(raw, b"\0" * 8), "duplicate tensor name 'a'")


def test_refuses_disallowed_dtype():
    _check(_file({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "dtype 'C64', not one of")


def test_refuses_shape_size_mismatch():
    _check(_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 12 bytes, but its offsets span 8")


def test_refuses_overlapping_offsets():
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    _check(_file(header, b"\0" * 12), "'b' starts at byte 4, which overlaps")


def test_refuses_offsets_past_the_end():
    _check(_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "cover 16 bytes but the data section is 8")


def test_refuses_gap_and_trailing_bytes():
    _check(_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "leaves a gap")
    _check(_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9), "data section is 9")


def test_refuses_negative_and_non_integer_shapes():
    _check(_file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "shape that is not a list of non-negative")
    _check(_file({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4), "shape that is not a list")
    _check(_file({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "shape that is not a list")


def test_refuses_non_string_metadata():
    _check(_file({"__metadata__": {"a": 1}}), "__metadata__ must map strings to strings")


@settings(max_examples=60, deadline=None)
@given(state_dicts(), st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_stream_decoder_yields_exact_values_for_any_chunking(tensors, sizes):
    data = safetensors.torch.save(tensors)
    decoder = stf.StreamDecoder()
    pieces: dict[str, list[np.ndarray]] = {}
    offset, i = 0, 0
    while offset < len(data):
        size = sizes[i % len(sizes)]
        for entry, values in decoder.feed(data[offset : offset + size]):
            pieces.setdefault(entry.name, []).append(values.copy())
        offset, i = offset + size, i + 1
    assert decoder.complete and not decoder.failed
    assert decoder.header.tensors == stf.read_header(io.BytesIO(data), len(data)).tensors
    for name, tensor in tensors.items():
        got = np.concatenate(pieces[name]) if name in pieces else np.empty(0)
        assert np.array_equal(got.astype(np.float64), tensor.reshape(-1).to(torch.float64).numpy())


def test_stream_decoder_flags_truncated_trailing_and_bad_streams():
    data = safetensors.torch.save({"a": torch.arange(10, dtype=torch.float32)})
    truncated = stf.StreamDecoder()
    list(truncated.feed(data[:-4]))
    assert not truncated.complete and not truncated.failed
    trailing = stf.StreamDecoder()
    list(trailing.feed(data + b"xx"))
    assert trailing.failed and not trailing.complete
    garbage = stf.StreamDecoder()
    assert list(garbage.feed(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 8)) == [] and garbage.failed
    zeros = stf.StreamDecoder()  # header length 0: refused, not an endless loop
    assert list(zeros.feed(b"\0" * 64)) == [] and zeros.failed
    huge = stf.StreamDecoder()
    assert list(huge.feed(struct.pack("<Q", 1 << 40))) == [] and huge.failed


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=300), st.integers(1, 40), st.booleans())
def test_stream_decoder_survives_arbitrary_bytes(data, size, with_valid_prefix):
    """Hostile streams: any bytes, any chunking, end in a verdict (decoded, failed or incomplete), never a hang."""
    if with_valid_prefix:
        data = safetensors.torch.save({"w": torch.ones(3)})[: len(data) % 64] + data
    decoder = stf.StreamDecoder()
    for start in range(0, len(data), size):
        for _entry, values in decoder.feed(data[start : start + size]):
            assert values.ndim == 1
    assert not (decoder.failed and decoder.complete)
