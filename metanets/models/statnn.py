"""StatNN baseline (Unterthiner et al. 2020): per-tensor mean, variance and quantiles into an MLP.

The statistics pass through a signed log, sign(x) log(1 + |x|), before standardisation: a zoo holds a few runs whose
weights grew by orders of magnitude (biases of 60 where the rest stay below 1), and on raw statistics such a
checkpoint lies so far outside the training range that the MLP's extrapolation is nonsense (a test accuracy of -21).
"""
from __future__ import annotations

import torch
from torch import nn

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def tensor_statistics(state_dict: dict[str, torch.Tensor], keys: list[str], signed_log: bool = True) -> torch.Tensor:
    """(7 * len(keys),) features: mean, variance and the five quantiles of every listed tensor, through a signed log
    unless ``signed_log`` is False (StatNN configs saved before it)."""
    feats = []
    for k in keys:
        t = state_dict[k].double().reshape(-1)
        q = torch.quantile(t, torch.tensor(QUANTILES, dtype=torch.float64))
        feats.append(torch.cat([t.mean()[None], t.var(unbiased=False)[None], q]))
    feats = torch.cat(feats)
    return torch.sign(feats) * torch.log1p(feats.abs()) if signed_log else feats


class StatNN(nn.Module):
    """Standardised statistics -> MLP; the standardisation (fit on the training split) lives in buffers."""

    def __init__(self, n_features: int, out_dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        dims = [n_features] + [hidden] * layers
        self.body = nn.Sequential(*(m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())))
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.body((feats.to(self.mean.dtype) - self.mean) / self.std)
        return self.out(emb), emb
