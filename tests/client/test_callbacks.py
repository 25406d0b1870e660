"""Lightning and Hugging Face callbacks drive SpectralMonitor from real (tiny) trainers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightscope import WeightscopeClient

EVERY = 3
MAX_STEPS = 7


def _layer_steps(server):
    records = server.telemetry_records()
    layers = {}
    for r in records:
        layers.setdefault(r["layer"], set()).add(r["step"])
    return records, layers


def test_lightning_callback(fake_server, tmp_path):
    import lightning.pytorch as pl
    from weightscope.callbacks.lightning import WeightscopeCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
            self.losses = {}

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.losses[self.trainer.global_step] = float(loss.detach())
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randn(64, 1))
    module = Module()
    callback = WeightscopeCallback(WeightscopeClient(fake_server.url).run("r"), every=EVERY)
    trainer = pl.Trainer(max_steps=MAX_STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[callback])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    records, layers = _layer_steps(fake_server)
    monitored = {s for s in range(MAX_STEPS) if s % EVERY == 0}
    assert layers == {"net.0": monitored, "net.2": monitored, "_step": monitored}
    for r in records:
        if r["layer"] == "_step":
            assert r["metrics"]["loss"] == pytest.approx(module.losses[r["step"]])
            assert r["metrics"]["grad_norm"] > 0
        else:
            assert 0 <= r["metrics"]["sa_sign_diversity"] <= 1 and r["metrics"]["sa_count"] > 0
    assert callback.monitor is None  # closed at fit end


def test_hf_trainer_callback(fake_server, tmp_path):
    import transformers
    from weightscope.callbacks.hf import WeightscopeCallback

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 12)
            self.fc2 = nn.Linear(12, 1)

        def forward(self, x, labels=None):
            out = self.fc2(torch.tanh(self.fc1(x)))
            return {"loss": nn.functional.mse_loss(out, labels), "logits": out}

    torch.manual_seed(0)
    data = [{"x": torch.randn(6), "labels": torch.randn(1)} for _ in range(64)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=MAX_STEPS, per_device_train_batch_size=8,
                                          logging_steps=2, report_to="none", save_strategy="no", use_cpu=True,
                                          disable_tqdm=True)
    callback = WeightscopeCallback(WeightscopeClient(fake_server.url).run("r"), every=EVERY)
    trainer = transformers.Trainer(model=Model(), args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    records, layers = _layer_steps(fake_server)
    monitored = {s for s in range(MAX_STEPS) if s % EVERY == 0}
    assert layers["fc1"] == monitored and layers["fc2"] == monitored
    logged = {h["step"] - 1: h["loss"] for h in trainer.state.log_history if "loss" in h}
    step_losses = {r["step"]: r["metrics"]["loss"] for r in records if r["layer"] == "_step" and "loss" in r["metrics"]}
    assert step_losses == pytest.approx(logged)
    grad_norms = [r["metrics"]["grad_norm"] for r in records if r["layer"] == "_step" and "grad_norm" in r["metrics"]]
    assert len(grad_norms) == len(monitored) and all(g > 0 for g in grad_norms)
