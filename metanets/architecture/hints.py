"""Facts that tensor names and shapes cannot give (heads, activation, strides), supplied by the caller."""
from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import ArchitectureError


@dataclass
class Hints:
    """Optional facts; ``None`` means the family's own convention (or, for ``num_heads``, that it is required)."""

    family: str | None = None  # force one family instead of recognising it
    num_heads: int | None = None
    num_kv_heads: int | None = None
    activation: str | None = None
    eps: float | None = None
    rope_theta: float | None = None
    causal: bool | None = None
    input_shape: list[int] | None = None  # per example, without batch: (F,), (C, H, W) or (T,)
    groupnorm_groups: int | None = None
    conv_stride: int | None = None
    conv_padding: int | None = None
    global_pool: str | None = None  # "avg" or "flatten" between the last conv and the first linear

    @classmethod
    def parse(cls, hints: dict | Hints | None) -> Hints:
        if isinstance(hints, Hints):
            return hints
        hints = dict(hints or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(hints) - known)
        if unknown:
            raise ArchitectureError([f"unknown hint {k!r} (known: {sorted(known)})" for k in unknown])
        h = cls(**hints)
        for name in ("num_heads", "num_kv_heads", "groupnorm_groups", "conv_stride"):
            v = getattr(h, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ArchitectureError(f"hint {name!r} must be a positive integer, got {v!r}")
        if h.global_pool not in (None, "avg", "flatten"):
            raise ArchitectureError(f"hint 'global_pool' must be 'avg' or 'flatten', got {h.global_pool!r}")
        from ..runnable import ACTIVATIONS

        if h.activation is not None and h.activation not in ACTIVATIONS:
            raise ArchitectureError(f"hint 'activation' {h.activation!r} is not one of {list(ACTIVATIONS)}")
        return h

    def heads(self, family: str, width: int) -> int:
        """The head count, which names never give: required, and it must divide the width."""
        if self.num_heads is None:
            raise ArchitectureError(f"{family}: hint 'num_heads' is required (tensor names do not give it)")
        if width % self.num_heads:
            raise ArchitectureError(f"hint 'num_heads'={self.num_heads} does not divide the width {width} "
                                    f"of this {family} checkpoint")
        return self.num_heads
