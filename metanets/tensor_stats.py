"""Per-tensor statistics computed in one streaming pass over chunks (Chan's parallel mean/variance)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


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
    """Feed flat chunks of one tensor in any order; `result()` equals the statistics of their union."""

    def __init__(self) -> None:
        self.numel = 0
        self.count = 0  # finite values
        self.mean = 0.0
        self.m2 = 0.0
        self.sumsq = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zeros = 0
        self.nans = 0
        self.infs = 0

    def update(self, chunk: torch.Tensor) -> None:
        chunk = chunk.reshape(-1)
        if chunk.numel() == 0:
            return
        if chunk.dtype == torch.bool or not chunk.is_floating_point():
            values = chunk.to(torch.float64)
            finite = values
        else:
            values = chunk.to(torch.float64)
            finite_mask = torch.isfinite(values)
            nans = int(torch.isnan(values).sum())
            self.nans += nans
            self.infs += int(values.numel() - finite_mask.sum()) - nans
            finite = values if nans == 0 and bool(finite_mask.all()) else values[finite_mask]
        self.numel += chunk.numel()
        self.zeros += int((values == 0).sum())
        n = finite.numel()
        if n == 0:
            return
        chunk_mean = float(finite.mean())
        chunk_m2 = float(((finite - chunk_mean) ** 2).sum())
        total = self.count + n
        delta = chunk_mean - self.mean
        self.mean += delta * n / total
        self.m2 += chunk_m2 + delta * delta * self.count * n / total
        self.count = total
        self.sumsq += float((finite * finite).sum())
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))

    def result(self) -> TensorStats:
        if self.count == 0:
            return TensorStats(None, None, None, None, None, self.zeros / self.numel if self.numel else None, self.nans, self.infs)
        return TensorStats(
            mean=self.mean,
            std=math.sqrt(max(self.m2, 0.0) / self.count),
            min=self.min,
            max=self.max,
            l2_norm=math.sqrt(self.sumsq),
            zero_fraction=self.zeros / self.numel,
            nan_count=self.nans,
            inf_count=self.infs,
        )


def tensor_stats(tensor: torch.Tensor, chunk_elements: int = 1 << 22) -> TensorStats:
    """Statistics of a whole in-memory tensor (chunked to bound the float64 working copy)."""
    acc = StatsAccumulator()
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), chunk_elements):
        acc.update(flat[start : start + chunk_elements])
    return acc.result()
