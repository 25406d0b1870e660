"""Small CNN zoo after Unterthiner et al. 2020, trained on scikit-learn digits, a chunk of runs at once.

Each run: three 3x3 stride-2 conv layers of 16 channels, global average pooling, dropout, a dense layer (4,970
parameters). Sampled per run: optimizer, learning rate, L2, init scale and distribution, dropout, train fraction
and activation. All runs of a chunk step together: ``torch.func.vmap`` of ``grad`` over a (runs, parameters) matrix.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from .data import digits
from .flat import FlatLayout

CHANNELS, CLASSES, STRIDE, PADDING, BATCH = 16, 10, 2, 1, 32
OPTIMIZERS = ("sgd", "adam", "rmsprop")
INIT_DISTS = ("normal", "uniform", "truncated_normal")
LAYOUT = FlatLayout({"0.weight": (CHANNELS, 1, 3, 3), "0.bias": (CHANNELS,),
                     "2.weight": (CHANNELS, CHANNELS, 3, 3), "2.bias": (CHANNELS,),
                     "4.weight": (CHANNELS, CHANNELS, 3, 3), "4.bias": (CHANNELS,),
                     "8.weight": (CLASSES, CHANNELS), "8.bias": (CLASSES,)})


def small_cnn(activation: str = "relu") -> nn.Sequential:
    """The module whose state dict every member holds (keys 0, 2, 4: convs; 8: dense)."""
    act = nn.ReLU if activation == "relu" else nn.Tanh
    conv = lambda c_in: nn.Conv2d(c_in, CHANNELS, 3, stride=STRIDE, padding=PADDING)  # noqa: E731
    return nn.Sequential(conv(1), act(), conv(CHANNELS), act(), conv(CHANNELS), act(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(CHANNELS, CLASSES))


def describe_hints(activation: str) -> dict:
    """Hints that make ``metanets.describe`` (sequential family) rebuild exactly this network."""
    return {"activation": activation, "conv_stride": STRIDE, "conv_padding": PADDING}


def sample_hyperparameters(g: torch.Generator) -> dict:
    """One run's hyperparameters, in the ranges of the Small CNN Zoo (learning rate log-uniform in [5e-4, 5e-2],
    ten times higher for SGD, which otherwise rarely leaves chance level in a few epochs)."""
    u = lambda: torch.rand((), generator=g).item()  # noqa: E731
    pick = lambda xs: xs[int(torch.randint(len(xs), (), generator=g))]  # noqa: E731
    optimizer = pick(OPTIMIZERS)
    lr = 10 ** (-3.3 + 2 * u()) * (10 if optimizer == "sgd" else 1)
    return {"optimizer": optimizer, "learning_rate": lr, "l2": 10 ** (-8 + 6 * u()),
            "init_std": 10 ** (-2.5 + 2.2 * u()), "init_dist": pick(INIT_DISTS), "dropout": 0.7 * u(),
            "train_fraction": pick((0.1, 0.25, 0.5, 1.0)), "activation": pick(("relu", "tanh"))}


def initial_weights(hp: dict, g: torch.Generator) -> torch.Tensor:
    """A flat parameter vector: weights from the sampled distribution and scale, biases zero."""
    parts = []
    for k, shape in LAYOUT.shapes.items():
        n = math.prod(shape)
        if k.endswith("bias"):
            parts.append(torch.zeros(n))
        elif hp["init_dist"] == "normal":
            parts.append(torch.randn(n, generator=g) * hp["init_std"])
        elif hp["init_dist"] == "uniform":
            parts.append((torch.rand(n, generator=g) * 2 - 1) * hp["init_std"] * math.sqrt(3))
        else:
            parts.append(torch.randn(n, generator=g).clamp(-2, 2) * hp["init_std"])
    return torch.cat(parts)


def forward(theta: torch.Tensor, x: torch.Tensor, relu: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits of one run. ``relu`` is 1.0 for ReLU, 0.0 for tanh; ``keep`` is the scaled dropout mask (B, 16)."""
    p = LAYOUT.unflatten(theta)
    h = x
    for k in ("0", "2", "4"):
        z = F.conv2d(h, p[f"{k}.weight"], p[f"{k}.bias"], stride=STRIDE, padding=PADDING)
        h = relu * F.relu(z) + (1 - relu) * torch.tanh(z)
    return (h.mean((2, 3)) * keep) @ p["8.weight"].T + p["8.bias"]


def _loss(theta, x, y, relu, keep, l2):
    w = LAYOUT.unflatten(theta)
    penalty = sum((v ** 2).sum() for k, v in w.items() if k.endswith("weight"))
    return F.cross_entropy(forward(theta, x, relu, keep), y) + l2 * penalty


_grads = vmap(grad(_loss))
_logits = vmap(forward, in_dims=(0, None, 0, None))


def _evaluate(theta, relu, x, y):
    """Accuracy and loss of every run on (x, y), per example: (runs, N) correctness and losses."""
    logits = _logits(theta, x, relu, torch.ones(len(x), CHANNELS, device=x.device))
    correct = (logits.argmax(-1) == y).float()
    loss = F.cross_entropy(logits.transpose(1, 2), y.expand(len(theta), -1), reduction="none")
    return correct, loss


def train_runs(hps: list[dict], inits: torch.Tensor, epochs: list[int], seed: int, data_seed: int,
               device: str = "cpu"):
    """Train the runs together; returns, for every epoch in ``epochs``, (thetas on the CPU, labels per run).

    An epoch is the number of steps that covers the whole training pool once, whatever a run's train fraction.
    A run whose parameters stop being finite is frozen at its last finite point (``diverged`` label). Random
    numbers are drawn on the CPU, so a GPU run sees the same batches and dropout masks.
    """
    x_pool, y_pool, x_test, y_test = (t.to(device) for t in digits(data_seed))
    g = torch.Generator().manual_seed(seed)
    m, n_pool = len(hps), len(x_pool)
    col = lambda key: torch.tensor([float(h[key]) for h in hps], device=device)  # noqa: E731
    lr, l2, rate = col("learning_rate"), col("l2"), col("dropout")
    relu = torch.tensor([1.0 if h["activation"] == "relu" else 0.0 for h in hps], device=device)
    opt = torch.tensor([OPTIMIZERS.index(h["optimizer"]) for h in hps], device=device)[:, None]
    n_train = torch.tensor([max(BATCH, int(h["train_fraction"] * n_pool)) for h in hps])
    subsets = torch.stack([torch.randperm(n_pool, generator=g) for _ in hps])  # first n_train[i] are run i's
    in_train = torch.zeros(m, n_pool)
    in_train.scatter_(1, subsets, (torch.arange(n_pool)[None] < n_train[:, None]).float())
    in_train, subsets_dev = in_train.to(device), subsets.to(device)
    theta = inits.to(device)
    mom, sq = torch.zeros_like(theta), torch.zeros_like(theta)
    diverged = torch.zeros(m, dtype=torch.bool, device=device)
    steps_per_epoch, step, out = n_pool // BATCH, 0, []
    for epoch in range(epochs[-1] + 1):
        if epoch > 0:
            for _ in range(steps_per_epoch):
                step += 1
                pick = (torch.rand(m, BATCH, generator=g) * n_train[:, None]).long()
                idx = subsets_dev.gather(1, pick.to(device))
                keep = (torch.rand(m, BATCH, CHANNELS, generator=g).to(device) >= rate[:, None, None]) / (1 - rate[:, None, None])
                gr = _grads(theta, x_pool[idx], y_pool[idx], relu, keep, l2)
                mom = torch.where(opt == 0, 0.9 * mom + gr, torch.where(opt == 1, 0.9 * mom + 0.1 * gr, mom))
                sq = torch.where(opt == 1, 0.999 * sq + 0.001 * gr ** 2, torch.where(opt == 2, 0.9 * sq + 0.1 * gr ** 2, sq))
                adam = (mom / (1 - 0.9 ** step)) / ((sq / (1 - 0.999 ** step)).sqrt() + 1e-8)
                update = torch.where(opt == 0, mom, torch.where(opt == 1, adam, gr / (sq.sqrt() + 1e-8)))
                new = theta - lr[:, None] * update
                ok = torch.isfinite(new).all(1) & (new.abs().amax(1) < 1e4) & ~diverged
                diverged |= ~ok
                theta = torch.where(ok[:, None], new, theta)
        if epoch in epochs:
            with torch.no_grad():
                test_correct, test_loss = _evaluate(theta, relu, x_test, y_test)
                pool_correct, _ = _evaluate(theta, relu, x_pool, y_pool)
            train_acc = (pool_correct * in_train).sum(1) / in_train.sum(1)
            test_acc = test_correct.mean(1)
            labels = [{"test_accuracy": float(test_acc[i]), "train_accuracy": float(train_acc[i]),
                       "generalization_gap": float(train_acc[i] - test_acc[i]),
                       "test_loss": float(test_loss[i].mean()), "epoch": epoch, "diverged": bool(diverged[i])}
                      for i in range(m)]
            out.append((epoch, theta.cpu(), labels))
    return out
