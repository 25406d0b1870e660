"""What a zoo is made from (``ZooRecipe``) and what it holds (``ZooMember``): plain, JSON-ready dataclasses."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ..errors import MetanetError

KINDS = ("small_cnn_digits", "siren_digits")


@dataclass
class ZooRecipe:
    """A zoo, fully determined by its fields: ``size`` training runs (CNN) or images (INR) from ``seed``.

    CNN: each run is saved at every epoch in ``checkpoints`` (so ``size * len(checkpoints)`` members).
    INR: ``size`` digit images, each fitted ``seeds`` times; with ``shared_init`` fit s of every image starts from
    the same initialisation s, so weights differ by what the image adds rather than by init noise (an 8x8 image
    moves a 1,185-parameter SIREN very little). ``chunk`` models are trained at once (batched).
    """

    kind: str
    size: int
    seed: int = 0
    checkpoints: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 12, 18])
    seeds: int = 3
    steps: int = 300  # INR fitting steps
    shared_init: bool = False  # INR: one initialisation per seed, shared by all images
    chunk: int = 64

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MetanetError(f"unknown zoo kind {self.kind!r} (known: {list(KINDS)})")
        if not isinstance(self.size, int) or self.size <= 0:
            raise MetanetError(f"zoo size must be a positive integer, got {self.size!r}")
        if not self.checkpoints or sorted(set(self.checkpoints)) != list(self.checkpoints) or self.checkpoints[0] < 0:
            raise MetanetError(f"checkpoints must be increasing non-negative epochs, got {self.checkpoints!r}")
        if self.seeds <= 0 or self.steps <= 0 or self.chunk <= 0:
            raise MetanetError("seeds, steps and chunk must be positive")

    def to_json(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Identifies the recipe, except for ``size`` (a larger zoo resumes a smaller one of the same recipe)."""
        d = {k: v for k, v in asdict(self).items() if k != "size"}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ZooMember:
    """One checkpoint of a zoo: where its weights lie, its run (the split group), labels and metadata."""

    id: str
    run: str
    file: str
    labels: dict
    meta: dict
