"""What each analysis kind runs, in a worker: canonical safetensors path, parameters, progress -> JSON result."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open

from metanets import spectra

from .kinds import WeightSpectraParams

Progress = Callable[[float], None]


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


def weight_spectra(path: Path, params: dict, progress: Progress) -> dict:
    p = WeightSpectraParams.model_validate(params)
    layers = spectra.weight_spectra(StoredTensors(path), min_evals=p.min_evals, progress=progress)
    return {"version": spectra.ANALYSIS_VERSION, "summary": spectra.summary(layers), "layers": layers}


RUNNERS: dict[str, Callable[[Path, dict, Progress], dict]] = {
    "weight_spectra": weight_spectra,
}
