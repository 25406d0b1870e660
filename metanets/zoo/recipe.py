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
    INR: ``size`` digit images, each fitted ``seeds`` times for ``steps`` Adam steps; with ``shared_init`` fit s of
    every image starts from the same initialisation s, so weights differ by what the image adds rather than by init
    noise (the first layer barely moves from its initialisation). ``resolution`` upsamples the 8x8 digits
    (bilinear) to a finer grid before fitting, ``w0`` is the SIREN frequency of both sine layers (30 in DWSNets,
    made for 28x28 images; on 8x8 it is far above the grid's Nyquist rate and the fit memorises pixels).
    ``chunk`` models are trained at once (batched).
    """

    kind: str
    size: int
    seed: int = 0
    checkpoints: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 12, 18])
    seeds: int = 3
    steps: int = 300  # INR fitting steps
    shared_init: bool = False  # INR: one initialisation per seed, shared by all images
    chunk: int = 64
    w0: float = 30.0  # INR: SIREN frequency (both sine layers)
    resolution: int = 8  # INR: the digits are upsampled to resolution x resolution before fitting

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MetanetError(f"unknown zoo kind {self.kind!r} (known: {list(KINDS)})")
        if not isinstance(self.size, int) or self.size <= 0:
            raise MetanetError(f"zoo size must be a positive integer, got {self.size!r}")
        if not self.checkpoints or sorted(set(self.checkpoints)) != list(self.checkpoints) or self.checkpoints[0] < 0:
            raise MetanetError(f"checkpoints must be increasing non-negative epochs, got {self.checkpoints!r}")
        for name in ("seeds", "steps", "chunk", "resolution"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise MetanetError(f"{name} must be a positive integer, got {v!r}")
        if self.resolution < 8 or self.resolution > 64:
            raise MetanetError(f"resolution must be between 8 (the digits' own) and 64, got {self.resolution!r}")
        if isinstance(self.w0, bool) or not isinstance(self.w0, (int, float)) or not 0 < self.w0 <= 100:
            raise MetanetError(f"w0 must be a number in (0, 100], got {self.w0!r}")
        self.w0 = float(self.w0)

    def to_json(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Identifies the recipe, except for ``size`` (a larger zoo resumes a smaller one of the same recipe)."""
        d = {k: v for k, v in asdict(self).items() if k != "size"}
        for k, default in (("w0", 30.0), ("resolution", 8)):  # fields added later: zoos made before them resume
            if d[k] == default:
                del d[k]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ZooMember:
    """One checkpoint of a zoo: where its weights lie, its run (the split group), labels and metadata."""

    id: str
    run: str
    file: str
    labels: dict
    meta: dict
