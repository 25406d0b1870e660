"""Spectral Alignment (SA) math as pure torch functions.

Definition (our reading of arXiv:2510.04202, see reference/analyses.md B.3): for a weight W (d_out x d_in) with top
singular triple (sigma1, u1, v1), the alignment of an input x_t is SA_t = <x_t, v1> / |x_t| in [-1, 1]. Inputs are
*not* centered (centering erased the signal in our probe). The choice of singular vector is explicit: ``space="input"``
pairs layer inputs with v1, ``space="output"`` pairs layer outputs with u1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
DEFAULT_HIST_BINS = 10
DEFAULT_EPS = 1e-3


@dataclass(frozen=True)
class TopSingular:
    """Top singular triple of a matrix from power iteration, with the iteration count and final residual."""

    sigma: float
    u: torch.Tensor
    v: torch.Tensor
    iterations: int
    residual: float


def top_singular(
    weight: torch.Tensor,
    v0: torch.Tensor | None = None,
    *,
    max_iters: int = 100,
    tol: float = 1e-7,
    generator: torch.Generator | None = None,
) -> TopSingular:
    """Top singular triple of a 2-D ``weight`` by power iteration on W^T W, warm-started from ``v0`` if given.

    Stops when the change of v (up to sign) drops below ``tol`` or after ``max_iters``. The returned v is sign-aligned
    with ``v0`` (continuous between steps); without ``v0`` its largest entry is positive. Runs in float64 for
    accuracy on small layers and float32 for large ones (more than 4M entries).
    """
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(weight.shape)}")
    dtype = torch.float64 if weight.numel() <= 4_000_000 else torch.float32
    w = weight.detach().to(dtype)
    d_in = w.shape[1]
    if v0 is not None and v0.shape == (d_in,) and torch.isfinite(v0).all() and float(v0.norm()) > 0:
        v = v0.detach().to(w)
    else:
        v = torch.randn(d_in, generator=generator, dtype=dtype, device="cpu").to(w.device)
    v = v / v.norm().clamp_min(torch.finfo(dtype).tiny)
    residual = float("inf")
    iterations = 0
    good = v
    for iterations in range(1, max_iters + 1):
        new = w.T @ (w @ v)
        new = new / new.norm()
        # convergence is checked on the first three iterations (warm starts usually stop there), then every fourth:
        # each check is a host sync, which dominates the cost on small layers
        if iterations > 3 and iterations % 4 and iterations < max_iters:
            v = new
            continue
        cos = float(torch.dot(new, v))
        if not math.isfinite(cos):  # zero or non-finite matrix: keep the last good vector
            v = good
            break
        residual = float((new - v).norm() if cos >= 0 else (new + v).norm())  # change up to sign
        v = good = new
        if residual < tol:
            break
    wv = w @ v
    sigma = float(wv.norm())
    u = wv / wv.norm().clamp_min(torch.finfo(dtype).tiny)
    if v0 is not None and v0.shape == v.shape:
        flip = float(torch.dot(v, v0.detach().to(v))) < 0
    else:
        flip = float(v[int(torch.argmax(v.abs()))]) < 0
    if flip:
        u, v = -u, -v
    return TopSingular(sigma=sigma, u=u, v=v, iterations=iterations, residual=residual)


def alignment(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """SA values: cosine of each row of ``x`` (n x d) with ``direction`` (d); no centering.

    Zero rows give 0; rows with non-finite entries give NaN (counted as ``sa_nonfinite``, a signal).
    """
    xf = x.detach().reshape(-1, direction.shape[0]).to(direction.dtype)
    d = direction / direction.norm().clamp_min(torch.finfo(direction.dtype).tiny)
    dots = xf @ d
    norms = xf.norm(dim=1)
    return torch.where(norms == 0, torch.zeros_like(dots), dots / norms)  # non-finite inputs stay non-finite


def sign_counts(sa: torch.Tensor, eps: float = DEFAULT_EPS) -> tuple[int, int]:
    """(positives, counted): SA values with |SA| >= eps count, the rest are near-orthogonal and ignored."""
    finite = sa[torch.isfinite(sa)]
    counted = finite[finite.abs() >= eps]
    return int((counted > 0).sum()), int(counted.numel())


def sign_diversity(sa: torch.Tensor, eps: float = DEFAULT_EPS) -> float:
    """SD = 2 min(p+, 1 - p+) over counted SA values: 1 is balanced, 0 is complete collapse; NaN if none counted.

    Invariant to flipping the singular vector's sign (p+ and 1 - p+ swap).
    """
    pos, n = sign_counts(sa, eps)
    if n == 0:
        return float("nan")
    return 2.0 * min(pos, n - pos) / n  # integer min keeps the value exactly symmetric under a sign flip


def sa_summary(
    sa: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    hist_bins: int = DEFAULT_HIST_BINS,
) -> dict[str, float]:
    """Telemetry metrics for one layer's SA values (names as in client/README.md).

    sa_sign_diversity, sa_pos_frac (of counted values), sa_abs_mean, sa_count (counted values), sa_nonfinite (count),
    sa_q{NN} quantiles and sa_hist_{ii} fractions over ``hist_bins`` equal bins on [-1, 1] (all finite values).
    """
    flat = sa.detach().reshape(-1).to(torch.float64)
    finite = flat[torch.isfinite(flat)]
    pos, n = sign_counts(finite, eps)
    out: dict[str, float] = {
        "sa_sign_diversity": 2.0 * min(pos, n - pos) / n if n else float("nan"),
        "sa_pos_frac": pos / n if n else float("nan"),
        "sa_abs_mean": float(finite.abs().mean()) if finite.numel() else float("nan"),
        "sa_count": float(n),
        "sa_nonfinite": float(flat.numel() - finite.numel()),
    }
    if finite.numel():
        qs = torch.quantile(finite, torch.tensor(quantiles, dtype=torch.float64))
        hist = torch.histc(finite.clamp(-1.0, 1.0), bins=hist_bins, min=-1.0, max=1.0) / finite.numel()
    else:
        qs = torch.full((len(quantiles),), float("nan"), dtype=torch.float64)
        hist = torch.full((hist_bins,), float("nan"), dtype=torch.float64)
    for q, val in zip(quantiles, qs.tolist(), strict=True):
        out[quantile_name(q)] = val
    for i, val in enumerate(hist.tolist()):
        out[f"sa_hist_{i:02d}"] = val
    return out


def quantile_name(q: float) -> str:
    """Metric name of quantile q: 0.05 -> sa_q05, 0.5 -> sa_q50, 0.995 -> sa_q99.5."""
    pct = round(q * 100, 6)
    return f"sa_q{int(pct):02d}" if pct == int(pct) else f"sa_q{pct:g}"
