"""Streaming statistics agree with a direct float64 computation whatever the chunking."""

from __future__ import annotations

import math

import pytest

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from metanets.tensor_stats import StatsAccumulator, tensor_stats
from storage.formats.safetensors import decode

values = st.lists(
    st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(0.0), st.just(math.nan), st.just(math.inf), st.just(-math.inf)),
    min_size=0,
    max_size=200,
)


def reference(xs: list[float]) -> dict:
    t = torch.tensor(xs, dtype=torch.float64)
    finite = t[torch.isfinite(t)]
    out = {"nan_count": int(torch.isnan(t).sum()), "inf_count": int(torch.isinf(t).sum())}
    if finite.numel():
        out.update(mean=float(finite.mean()), std=float(finite.std(unbiased=False)), min=float(finite.min()),
                   max=float(finite.max()), l2_norm=float(finite.norm()), zero_fraction=float((t == 0).sum()) / t.numel())
    return out


@settings(max_examples=200, deadline=None)
@given(values, st.integers(1, 50))
def test_chunked_statistics_match_direct_computation(xs, chunk):
    acc = StatsAccumulator()
    t = np.array(xs, dtype=np.float64)
    for start in range(0, len(xs), chunk):
        acc.update(t[start : start + chunk])
    got = acc.result().as_dict()
    want = reference(xs)
    assert got["nan_count"] == want["nan_count"] and got["inf_count"] == want["inf_count"]
    if "mean" not in want:
        assert got["mean"] is None and got["std"] is None
        return
    for key in ("mean", "std", "min", "max", "l2_norm", "zero_fraction"):
        assert math.isclose(got[key], want[key], rel_tol=1e-9, abs_tol=1e-6), key


@pytest.mark.parametrize("dtype,name", [(torch.bfloat16, "BF16"), (torch.float8_e4m3fn, "F8_E4M3"), (torch.float8_e5m2, "F8_E5M2"),
                                        (torch.float16, "F16"), (torch.int8, "I8"), (torch.bool, "BOOL")])
def test_decode_matches_torch_for_every_bit_pattern(dtype, name):
    """Every possible byte pattern (all 65536 for 2-byte types) decodes to torch's own float32 value."""
    width = torch.tensor([], dtype=dtype).element_size()
    raw = np.arange(256 ** width, dtype=np.uint32).astype(np.uint16 if width == 2 else np.uint8)
    if dtype == torch.bool:
        raw = raw[:2]
    want = torch.from_numpy(raw.copy()).view(dtype).to(torch.float32).numpy()
    got = decode(raw.view(np.uint8), name).astype(np.float32)
    assert np.array_equal(got, want, equal_nan=True)


def test_low_precision_and_integer_tensors():
    raw = torch.tensor([[1.5, -2.0], [0.0, 4.0]], dtype=torch.bfloat16).view(torch.uint8).numpy()
    s = tensor_stats(decode(raw, "BF16"))
    assert s.mean == 0.875 and s.min == -2.0 and s.max == 4.0 and s.zero_fraction == 0.25
    assert tensor_stats(np.array([True, False, True])).mean == 2 / 3
    assert tensor_stats(np.arange(5)).max == 4.0


def test_empty_tensor_has_no_moments():
    s = tensor_stats(np.empty((0, 3)))
    assert s.mean is None and s.zero_fraction is None and s.nan_count == 0


def test_streaming_stats_match_a_pass_over_the_file():
    """The upload path's streamed statistics are used only for a complete stream, and equal the file pass."""
    import io

    import safetensors.torch

    from app.ingest import StreamingStats
    from storage.formats import safetensors as stf

    g = torch.Generator().manual_seed(0)
    data = safetensors.torch.save({"a": torch.randn(300, 7, generator=g), "b": torch.randn(33, generator=g).half(), "c": torch.zeros(0)})
    header = stf.read_header(io.BytesIO(data), len(data))
    streamed = StreamingStats()
    for start in range(0, len(data), 7):
        streamed.feed(data[start : start + 7])
    ready = streamed.result(header)
    assert ready is not None
    for entry in header.tensors:
        raw = np.frombuffer(data, dtype=np.uint8, count=entry.end - entry.begin, offset=entry.begin)
        got, want = ready[entry.name].result().as_dict(), tensor_stats(decode(raw, entry.dtype)).as_dict()
        assert got.keys() == want.keys()
        for key in got:
            assert (got[key] is None and want[key] is None) or math.isclose(got[key], want[key], rel_tol=1e-12, abs_tol=1e-12), key
    cut = StreamingStats()
    cut.feed(data[:-8])
    assert cut.result(header) is None
