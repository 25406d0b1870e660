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
    """SA of every linear and convolution layer and every attention projection of the rebuilt checkpoint on its run's
    probe batch, posted to the run as telemetry at the checkpoint's step, where the run's detectors judge it like
    hook-sent records. Layer names and conventions: `app/jobs/alignment.py`. Ops that cannot be measured are listed
    in the result's `skipped`, never fail the job."""
    from safetensors.torch import load_file
    from weightscope.spectral import sa_summary

    from metanets import describe, rebuild
    from metanets.zoo.store import ordered_state_dict
    from storage import runs as run_rows

    from ..runs import DetectorCache, RunEvents, ingest_telemetry
    from .alignment import measure

    p = SpectralAlignmentParams.model_validate(ctx.params)
    with ctx.services.sessions() as session:
        checkpoint = checkpoints.get(session, ctx.checkpoint_id)
        run = run_rows.get(session, p.run)
    supplied = checkpoint.architecture_input or (run.model.get("architecture") if isinstance(run.model, dict) else None) or {}
    state = ordered_state_dict(ctx.checkpoint_path())
    desc = describe(state, hints=supplied.get("hints"), declarative=supplied.get("declarative"))
    net = rebuild(desc, state).eval()
    # half-precision checkpoints run in float32; float32 and float64 ones as stored; a float probe takes their dtype
    dtype = next((t.dtype for t in net.parameters() if t.is_floating_point()), torch.float32)
    if dtype in (torch.float16, torch.bfloat16):
        net, dtype = net.float(), torch.float32
    probe = load_file(str(ctx.services.blobs.path(run.probe_sha256)))["inputs"]
    probe = probe.to(dtype) if probe.is_floating_point() else probe
    ctx.progress(0.05)
    measured, skipped = measure(net, (probe,), p.max_tokens, progress=ctx.progress)
    records = []
    for m in measured:
        metrics = sa_summary(m.sa)
        metrics.update(sigma1=m.sigma1, weight_norm=m.weight_norm)
        records.append({"step": p.step, "layer": m.layer, "metrics": metrics})
    accepted = ingest_telemetry(ctx.services, DetectorCache(), RunEvents(), p.run, records) if records else {"new_warnings": 0}
    return {"run_id": p.run, "step": p.step, "layers": [r["layer"] for r in records], "skipped": skipped,
            "new_warnings": accepted["new_warnings"]}


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
