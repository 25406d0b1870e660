"""Analysis kinds a job can run on a stored checkpoint. Each takes the canonical safetensors path and a
progress callback and returns a JSON-serialisable result."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open

from metanets import spectra

Progress = Callable[[float], None]


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of a canonical safetensors blob, memory-mapped one at a time."""
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            yield name, f.get_tensor(name)


def weight_spectra(path: Path, params: dict, progress: Progress) -> dict:
    min_evals = int(params.get("min_evals", 10))
    layers = spectra.weight_spectra(iter_tensors(path), min_evals=min_evals, progress=progress)
    return {"version": spectra.ANALYSIS_VERSION, "summary": spectra.summary(layers), "layers": layers}


ANALYSES: dict[str, Callable[[Path, dict, Progress], dict]] = {
    "weight_spectra": weight_spectra,
}
PARAMS: dict[str, set[str]] = {"weight_spectra": {"min_evals"}}
