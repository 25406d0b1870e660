"""Group-aware splits: every checkpoint of one training run (or every INR of one image) lands on the same side."""
from __future__ import annotations

import torch

from .errors import MetanetError


def group_split(groups: list[str], val_fraction: float = 0.15, test_fraction: float = 0.15,
                seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) member indices; whole groups are assigned in an order shuffled by ``seed``."""
    unique = list(dict.fromkeys(groups))
    if len(unique) < 3:
        raise MetanetError(f"need at least 3 distinct groups (training runs) to split, got {len(unique)}")
    order = [unique[i] for i in torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))]
    n_test = max(1, round(test_fraction * len(unique)))
    n_val = max(1, round(val_fraction * len(unique)))
    if n_test + n_val >= len(unique):
        n_test, n_val = 1, 1
    side = {g: 2 if i < n_test else 1 if i < n_test + n_val else 0 for i, g in enumerate(order)}
    out = ([], [], [])
    for i, g in enumerate(groups):
        out[side[g]].append(i)
    return out
