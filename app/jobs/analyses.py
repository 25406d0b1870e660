"""Analysis kinds a job can run on a stored checkpoint. Each takes the canonical safetensors path and a
progress callback and returns a JSON-serialisable result."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open

from metanets import spectra

Progress = Callable[[float], None]


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of a canonical safetensors blob, memory-mapped one at a time."""
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            yield name, f.get_tensor(name)


class WeightSpectraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_evals: int = Field(10, ge=1, description="fewer eigenvalues than this: no power-law fit")


def weight_spectra(path: Path, params: dict, progress: Progress) -> dict:
    p = WeightSpectraParams.model_validate(params)
    layers = spectra.weight_spectra(iter_tensors(path), min_evals=p.min_evals, progress=progress)
    return {"version": spectra.ANALYSIS_VERSION, "summary": spectra.summary(layers), "layers": layers}


ANALYSES: dict[str, tuple[Callable[[Path, dict, Progress], dict], type[BaseModel]]] = {
    "weight_spectra": (weight_spectra, WeightSpectraParams),
}
