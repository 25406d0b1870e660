"""Invariant pooling shared by GMN and UNF: summary statistics of a set of feature vectors.

``stats`` pools with mean, standard deviation, max and min: all invariant to reordering the set, and together
the kind of per-tensor summary StatNN reads (moments and extremes), taken over learned features instead of raw weights.
"""
from __future__ import annotations

import torch

READOUTS = ("mean", "stats", "layer_stats")  # UNF already pools each tensor apart: layer_stats = stats
AGGREGATIONS = ("mean", "mean_max")  # GMN: how messages along a node's edges are combined
STAT_COUNT = 4  # mean, std, max, min


def set_stats(x: torch.Tensor) -> torch.Tensor:
    """(B, N, F) -> (B, 4 F): mean, std, max and min over the set axis N."""
    mean = x.mean(1)
    std = (x.pow(2).mean(1) - mean.pow(2)).clamp_min(0).add(1e-8).sqrt()
    return torch.cat([mean, std, x.amax(1), x.amin(1)], dim=1)


def segment_stats(x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """(N, F) rows grouped by ``index`` into ``size`` sets -> (size, 4 F): mean, std, max, min per set."""
    from torch_geometric.utils import scatter

    mean = scatter(x, index, 0, dim_size=size, reduce="mean")
    sq = scatter(x * x, index, 0, dim_size=size, reduce="mean")
    std = (sq - mean.pow(2)).clamp_min(0).add(1e-8).sqrt()
    return torch.cat([mean, std, scatter(x, index, 0, dim_size=size, reduce="max"),
                      scatter(x, index, 0, dim_size=size, reduce="min")], dim=1)
