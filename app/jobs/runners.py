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
from .kinds import SpectralAlignmentParams, WeightSpectraParams

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


def spectral_alignment(ctx: JobContext) -> dict:
    """SA of every linear layer of the rebuilt checkpoint on its run's probe batch, posted to the run as telemetry
    at the checkpoint's step, where the run's detectors judge it like hook-sent records."""
    from safetensors.torch import load_file
    from weightscope.spectral import alignment, sa_summary, top_singular

    from metanets import describe, rebuild
    from metanets.zoo.store import ordered_state_dict
    from storage import runs as run_rows

    from ..runs import DetectorCache, RunEvents, ingest_telemetry

    p = SpectralAlignmentParams.model_validate(ctx.params)
    with ctx.services.sessions() as session:
        checkpoint = checkpoints.get(session, ctx.checkpoint_id)
        run = run_rows.get(session, p.run)
    supplied = checkpoint.architecture_input or (run.model.get("architecture") if isinstance(run.model, dict) else None) or {}
    state = ordered_state_dict(ctx.checkpoint_path())
    desc = describe(state, hints=supplied.get("hints"), declarative=supplied.get("declarative"))
    net = rebuild(desc, state).eval()
    probe = load_file(str(ctx.services.blobs.path(run.probe_sha256)))["inputs"]
    linears = [op for op in desc.ops if op.kind == "linear"]
    with torch.no_grad():
        _, values = net(probe, capture=[op.inputs[0] for op in linears])
    values[desc.inputs[0].name] = probe
    generator = torch.Generator().manual_seed(0)
    records = []
    for i, op in enumerate(linears):
        weight = net.tensor(op, "weight").detach()
        weight = (weight.t() if op.attrs.get("transposed") else weight).double()
        x = values[op.inputs[0]].detach().reshape(-1, weight.shape[1]).double()
        if x.shape[0] > p.max_tokens:
            x = x[torch.randperm(x.shape[0], generator=generator)[: p.max_tokens]]
        top = top_singular(weight, generator=generator)
        metrics = sa_summary(alignment(x, top.v))
        metrics.update(sigma1=float(top.sigma), weight_norm=float(weight.norm()))
        records.append({"step": p.step, "layer": op.name, "metrics": metrics})
        ctx.progress(0.9 * (i + 1) / len(linears))
    accepted = ingest_telemetry(ctx.services, DetectorCache(), RunEvents(), p.run, records)
    return {"run_id": p.run, "step": p.step, "layers": [r["layer"] for r in records], "new_warnings": accepted["new_warnings"]}


def _zoo_generate(ctx: JobContext) -> dict:
    from ..zoos import generate

    return generate(ctx)


def _metanet_train(ctx: JobContext) -> dict:
    from ..zoos import train

    return train(ctx)


RUNNERS: dict[str, Callable[[JobContext], dict]] = {
    "weight_spectra": weight_spectra,
    "spectral_alignment": spectral_alignment,
    "zoo_generate": _zoo_generate,
    "metanet_train": _metanet_train,
}
