"""Training-framework callbacks wrapping SpectralMonitor; each submodule imports its framework when imported."""
