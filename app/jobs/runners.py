"""What each analysis kind runs, in a worker: canonical safetensors path, parameters, progress -> JSON result."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open

from metanets import spectra

from .kinds import WeightSpectraParams

Progress = Callable[[float], None]


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of a canonical safetensors blob, memory-mapped one at a time."""
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            yield name, f.get_tensor(name)


def weight_spectra(path: Path, params: dict, progress: Progress) -> dict:
    p = WeightSpectraParams.model_validate(params)
    layers = spectra.weight_spectra(iter_tensors(path), min_evals=p.min_evals, progress=progress)
    return {"version": spectra.ANALYSIS_VERSION, "summary": spectra.summary(layers), "layers": layers}


RUNNERS: dict[str, Callable[[Path, dict, Progress], dict]] = {
    "weight_spectra": weight_spectra,
}
