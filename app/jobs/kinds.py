"""Analysis kinds and their parameters, validated when a job is submitted. Torch-free: the API process
imports this; the code that runs each kind (`runners`) is imported only by workers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WeightSpectraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_evals: int = Field(10, ge=1, description="fewer eigenvalues than this: no power-law fit")


PARAMS: dict[str, type[BaseModel]] = {
    "weight_spectra": WeightSpectraParams,
}
