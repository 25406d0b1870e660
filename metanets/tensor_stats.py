"""Per-tensor statistics computed in one streaming pass over chunks (Chan's parallel mean/variance).

numpy rather than torch: the API process computes these at ingest and stays free of torch's memory and threads.
Extremes and the finiteness check run in the chunk's own dtype; sums accumulate in float64; no BLAS call is
used, so no thread pool is woken for small chunks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TensorStats:
    """Moments and extremes over the finite values; NaN and Inf are counted, not averaged."""

    mean: float | None
    std: float | None  # population standard deviation (ddof = 0)
    min: float | None
    max: float | None
    l2_norm: float | None
    zero_fraction: float | None
    nan_count: int
    inf_count: int

    def as_dict(self) -> dict:
        return asdict(self)


class StatsAccumulator:
    """Feed flat numeric chunks of one tensor in any order; `result()` equals the statistics of their union."""

    def __init__(self) -> None:
        self.numel = 0
        self.count = 0  # finite values
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zeros = 0
        self.nans = 0
        self.infs = 0

    def update(self, chunk: np.ndarray) -> None:
        values = np.asarray(chunk).reshape(-1)
        if values.size == 0:
            return
        if values.dtype == np.bool_:
            values = values.view(np.uint8)
        self.numel += values.size
        self.zeros += values.size - int(np.count_nonzero(values))
        low, high = values.min(), values.max()  # NaN propagates and Inf is extreme: both finite means all finite
        if not (np.isfinite(low) and np.isfinite(high)):
            finite = np.isfinite(values)
            nans = int(np.isnan(values).sum())
            self.nans += nans
            self.infs += int(values.size - finite.sum()) - nans
            values = values[finite]
            if values.size == 0:
                return
            low, high = values.min(), values.max()
        n = values.size
        chunk_mean = float(np.add.reduce(values, dtype=np.float64)) / n
        centred = values.astype(np.float64)
        centred -= chunk_mean
        chunk_m2 = float(np.square(centred, out=centred).sum())
        total = self.count + n
        delta = chunk_mean - self.mean
        self.mean += delta * n / total
        self.m2 += chunk_m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, float(low))
        self.max = max(self.max, float(high))

    def result(self) -> TensorStats:
        zero_fraction = self.zeros / self.numel if self.numel else None
        if self.count == 0:
            return TensorStats(None, None, None, None, None, zero_fraction, self.nans, self.infs)
        return TensorStats(
            mean=self.mean,
            std=math.sqrt(max(self.m2, 0.0) / self.count),
            min=self.min,
            max=self.max,
            l2_norm=math.sqrt(max(self.m2, 0.0) + self.count * self.mean**2),  # sum of squares = M2 + n mean^2
            zero_fraction=zero_fraction,
            nan_count=self.nans,
            inf_count=self.infs,
        )


def tensor_stats(values: np.ndarray, chunk_elements: int = 1 << 16) -> TensorStats:
    """Statistics of a whole in-memory array (chunked to bound the float64 working copy)."""
    acc = StatsAccumulator()
    flat = np.asarray(values).reshape(-1)
    for start in range(0, flat.size, chunk_elements):
        acc.update(flat[start : start + chunk_elements])
    return acc.result()
