"""A state dict as one flat vector, so that many models stack into a (models, parameters) matrix for batched training."""
from __future__ import annotations

import math

import torch


class FlatLayout:
    """Offsets of named tensors inside a flat parameter vector."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = dict(shapes)
        self.offsets, off = {}, 0
        for k, s in self.shapes.items():
            self.offsets[k] = (off, math.prod(s))
            off += math.prod(s)
        self.size = off

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of one model's vector (works under ``torch.func.vmap``)."""
        return {k: theta[o:o + n].view(self.shapes[k]) for k, (o, n) in self.offsets.items()}

    def state_dicts(self, thetas: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """One contiguous float32 state dict per row of ``thetas``."""
        return [{k: v.detach().float().contiguous().clone() for k, v in self.unflatten(t).items()} for t in thetas]
