"""PyTorch Lightning callback wrapping SpectralMonitor (importing this module imports lightning, or
pytorch_lightning when only that is installed)."""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.utilities import rank_zero_only
except ImportError:  # the older standalone package
    from pytorch_lightning import Callback
    from pytorch_lightning.utilities import rank_zero_only

from ..client import Run


class WeightscopeCallback(Callback):
    """Add with ``Trainer(callbacks=[WeightscopeCallback(run, every=10)])``.

    Steps are ``trainer.global_step`` (optimizer steps, 0-based). The loss comes from ``on_before_backward`` (the
    last micro-batch's under gradient accumulation), the gradient norm from ``on_before_optimizer_step``. Only rank 0
    reports.
    """

    def __init__(self, run: Run | str, *, every: int = 10, **monitor_kwargs: Any):
        self.run = run
        self.every = every
        self.monitor_kwargs = monitor_kwargs
        self.monitor = None
        self._loss = None

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module):
        if self.monitor is None:
            from ..monitor import SpectralMonitor

            self.monitor = SpectralMonitor(pl_module, self.run, every=self.every, **self.monitor_kwargs)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.monitor is not None:
            self.monitor.begin_step(trainer.global_step)

    def on_before_backward(self, trainer, pl_module, loss):
        if self.monitor is not None:
            self._loss = float(loss.detach())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.monitor is not None:
            self.monitor.step(self._loss, step=trainer.global_step)

    def on_fit_end(self, trainer, pl_module):
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
