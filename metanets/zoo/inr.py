"""INR zoo: one SIREN 2-32-32-1 per digit image (DWSNets convention), a chunk of fits at once with torch.func.

The 8x8 digits can be upsampled (bilinear) to a finer grid before fitting, and ``w0`` can be lowered to match the
grid: both are recipe fields, recorded in every member's ``meta["siren"]`` by ``convention``.
"""
from __future__ import annotations

import math

import torch
from torch.func import grad, vmap

from .flat import FlatLayout

HIDDEN, W0, OFFSET, LR = 32, 30.0, 0.5, 1e-3
LAYOUT = FlatLayout({"0.weight": (HIDDEN, 2), "0.bias": (HIDDEN,), "1.weight": (HIDDEN, HIDDEN),
                     "1.bias": (HIDDEN,), "2.weight": (1, HIDDEN), "2.bias": (1,)})


def convention(w0: float = W0, resolution: int = 8) -> dict:
    """How the weights compute the image (recorded with every member)."""
    target = ("the 8x8 digit" if resolution == 8 else
              f"the 8x8 digit upsampled bilinearly (align_corners) to {resolution}x{resolution}")
    return {"family": "siren", "layers": [2, HIDDEN, HIDDEN, 1], "w0_first": float(w0), "w0_hidden": float(w0),
            "output_offset": OFFSET, "activation": "sin(w0 * (W x + b)) after layers 0 and 1, none after 2",
            "coordinates": f"{resolution}x{resolution} grid in [-1, 1]^2 (pixel centres at linspace(-1, 1, "
                           f"{resolution})), row-major (y, x)",
            "target": f"{target}, pixel values in [0, 1]", "resolution": resolution, "convention": "DWSNets"}


CONVENTION = convention()  # the default recipe's (w0 = 30 on the 8x8 grid)


def coordinates(size: int = 8) -> torch.Tensor:
    """Pixel centres of a size x size image in [-1, 1]^2, shape (size*size, 2)."""
    t = torch.linspace(-1, 1, size)
    return torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) images resampled bilinearly to (N, size, size); corners stay on the [-1, 1] grid's corners."""
    if images.shape[-1] == size:
        return images
    return torch.nn.functional.interpolate(images[:, None], size=(size, size), mode="bilinear",
                                           align_corners=True)[:, 0]


def siren(theta: torch.Tensor, coords: torch.Tensor, w0: float = W0) -> torch.Tensor:
    """Pixel values of one INR at ``coords``."""
    p = LAYOUT.unflatten(theta)
    h = torch.sin(w0 * (coords @ p["0.weight"].T + p["0.bias"]))
    h = torch.sin(w0 * (h @ p["1.weight"].T + p["1.bias"]))
    return (h @ p["2.weight"].T + p["2.bias"]).squeeze(-1) + OFFSET


def initial_weights(g: torch.Generator, w0: float = W0) -> torch.Tensor:
    """SIREN initialisation: U(-1/n, 1/n) in the first layer, U(-sqrt(6/n)/w0, sqrt(6/n)/w0) after it."""
    parts = []
    for k, shape in LAYOUT.shapes.items():
        fan_in = 2 if k.startswith("0.") else HIDDEN
        bound = 1 / fan_in if k.startswith("0.") else math.sqrt(6 / fan_in) / w0
        parts.append((torch.rand(math.prod(shape), generator=g) * 2 - 1) * bound)
    return torch.cat(parts)


def _mse(theta, coords, target, w0):
    return ((siren(theta, coords, w0) - target) ** 2).mean()


_grads = vmap(grad(_mse), in_dims=(0, None, 0, None))
_errors = vmap(_mse, in_dims=(0, None, 0, None))


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    return -10 * torch.log10(mse.clamp_min(1e-12))


def fit(inits: torch.Tensor, images: torch.Tensor, steps: int, device: str = "cpu", w0: float = W0,
        lr: float = LR) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit every row of ``inits`` to its image (Adam, full batch); returns (thetas, final MSE per INR) on the CPU.

    ``images`` (N, s, s) are fitted on the s x s grid of ``coordinates(s)``.
    """
    coords, target = coordinates(images.shape[-1]).to(device), images.reshape(len(images), -1).to(device)
    theta = inits.to(device)
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    for t in range(1, steps + 1):
        gr = _grads(theta, coords, target, w0)
        m = 0.9 * m + 0.1 * gr
        v = 0.999 * v + 0.001 * gr ** 2
        theta = theta - lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
    with torch.no_grad():
        return theta.cpu(), _errors(theta, coords, target, w0).cpu()

