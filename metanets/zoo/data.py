"""scikit-learn's bundled 8x8 ``digits`` images (no download), split once per seed into a training pool and a test set."""
from __future__ import annotations

import functools

import torch


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    return x, torch.tensor(d.target, dtype=torch.long)


def digits(seed: int, test_fraction: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_pool, y_pool, x_test, y_test): images (N, 1, 8, 8) in [0, 1] and labels, shuffled by ``seed``."""
    x, y = _digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(x)))
    test, pool = order[:n_test], order[n_test:]
    return x[pool, None], y[pool], x[test, None], y[test]


def digit_images(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, images (N, 8, 8), labels): all digits images in a fixed order drawn from ``seed``."""
    x, y = _digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return order, x[order], y[order]
