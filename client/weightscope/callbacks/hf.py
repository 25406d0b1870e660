"""Hugging Face ``transformers.Trainer`` callback wrapping SpectralMonitor (importing this module imports
transformers)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..client import Run


class WeightscopeCallback(TrainerCallback):
    """Add with ``Trainer(..., callbacks=[WeightscopeCallback(run, every=10)])`` (v5 attaches no integration itself).

    Steps are ``state.global_step`` before the optimizer step (0-based). Gradient norms are taken in
    ``on_pre_optimizer_step`` (after gradient clipping, as the optimizer sees them). Trainer passes no per-step loss to
    callbacks, so the logged loss (averaged over ``logging_steps``) is sent from ``on_log`` at the last step it covers.
    Only the main process reports.
    """

    def __init__(self, run: Run | str, *, every: int = 10, **monitor_kwargs: Any):
        self.run = run
        self.every = every
        self.monitor_kwargs = monitor_kwargs
        self.monitor = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.monitor is None:
            from ..monitor import SpectralMonitor

            self.monitor = SpectralMonitor(model, self.run, every=self.every, **self.monitor_kwargs)
            self.monitor.begin_step(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.begin_step(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.step(step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is not None and logs and "loss" in logs and state.global_step > 0:
            self.monitor.log_scalars(state.global_step - 1, {"loss": float(logs["loss"])})

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
