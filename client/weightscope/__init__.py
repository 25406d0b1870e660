"""Weightscope client: HTTP client, background telemetry poster and (with torch) the SpectralMonitor.

``import weightscope`` needs only httpx; torch is imported when SpectralMonitor or weightscope.spectral is used.
"""

from typing import Any

from .client import Run, WarningsPage, WeightscopeClient, WeightscopeError, state_dict_to_safetensors, telemetry_record
from .poster import TelemetryPoster

__all__ = [
    "Run", "SpectralMonitor", "TelemetryPoster", "WarningsPage", "WeightscopeClient", "WeightscopeError",
    "state_dict_to_safetensors", "telemetry_record",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import the torch-based monitor only when it is asked for."""
    if name == "SpectralMonitor":
        from .monitor import SpectralMonitor

        return SpectralMonitor
    raise AttributeError(f"module 'weightscope' has no attribute {name!r}")
