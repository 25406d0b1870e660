"""Analysis kinds and their parameters, validated when a job is submitted. Torch-free: the API process
imports this; the code that runs each kind (`runners`) is imported only by workers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WeightSpectraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_evals: int = Field(10, ge=1, description="fewer eigenvalues than this: no power-law fit")


class SpectralAlignmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str | None = Field(None, description="run id; default: the checkpoint's run")
    step: int | None = Field(None, ge=0, description="training step; default: the checkpoint's step")
    max_tokens: int = Field(4096, ge=1, le=1_000_000, description="probe tokens used per measured matrix, sampled uniformly (a convolution's input patches count as tokens)")


PARAMS: dict[str, type[BaseModel]] = {
    "weight_spectra": WeightSpectraParams,
    "spectral_alignment": SpectralAlignmentParams,
}


def prepare(kind: str, params: dict, checkpoint, run_lookup) -> dict:
    """Fill defaults that come from the checkpoint and refuse what cannot run (raises ValueError with the reason).
    `run_lookup(run_id)` returns the run row or None."""
    if kind != "spectral_alignment":
        return params
    run_id = params["run"] or checkpoint.run
    step = params["step"] if params["step"] is not None else checkpoint.step
    run = run_lookup(run_id) if run_id else None
    if run is None:
        raise ValueError(f"spectral_alignment needs a run: {run_id!r} is not a run id (set params.run or upload with run=<run id>)")
    if run.probe_sha256 is None:
        raise ValueError(f"run {run_id!r} has no probe batch: PUT /v1/runs/{run_id}/probe first")
    if step is None:
        raise ValueError("spectral_alignment needs a step: set params.step or upload the checkpoint with step")
    return {**params, "run": run_id, "step": step}
