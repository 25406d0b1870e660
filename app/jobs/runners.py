"""What each job kind runs in a worker: a JobContext in, a JSON-serialisable result out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open

from metanets import spectra
from storage import checkpoints

from ..services import Services
from .kinds import WeightSpectraParams

Progress = Callable[[float], None]


@dataclass
class JobContext:
    services: Services
    job_id: str
    params: dict
    checkpoint_id: str | None
    progress: Progress

    def checkpoint_path(self, checkpoint_id: str | None = None) -> Path:
        """The canonical safetensors blob of the job's (or the given) checkpoint."""
        checkpoint_id = checkpoint_id or self.checkpoint_id
        with self.services.sessions() as session:
            checkpoint = checkpoints.get(session, checkpoint_id) if checkpoint_id else None
        if checkpoint is None:
            raise LookupError(f"checkpoint {checkpoint_id!r} no longer exists")
        path = self.services.blobs.path(checkpoint.canonical_sha256)
        if not path.is_file():
            raise FileNotFoundError(f"the blob {checkpoint.canonical_sha256} of checkpoint {checkpoint_id!r} is missing from the store")
        return path


class StoredTensors:
    """The tensors of a canonical safetensors blob, loaded one at a time; sized, so progress needs no preload."""

    def __init__(self, path: Path):
        self.path = path
        with safe_open(str(path), framework="pt") as f:
            self.names = list(f.keys())

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        with safe_open(str(self.path), framework="pt") as f:
            for name in self.names:
                yield name, f.get_tensor(name)


def weight_spectra(ctx: JobContext) -> dict:
    p = WeightSpectraParams.model_validate(ctx.params)
    layers = spectra.weight_spectra(StoredTensors(ctx.checkpoint_path()), min_evals=p.min_evals, progress=ctx.progress)
    return {"version": spectra.ANALYSIS_VERSION, "summary": spectra.summary(layers), "layers": layers}


def _zoo_generate(ctx: JobContext) -> dict:
    from ..zoos import generate

    return generate(ctx)


def _metanet_train(ctx: JobContext) -> dict:
    from ..zoos import train

    return train(ctx)


RUNNERS: dict[str, Callable[[JobContext], dict]] = {
    "weight_spectra": weight_spectra,
    "zoo_generate": _zoo_generate,
    "metanet_train": _metanet_train,
}
