"""Continuous power-law fit of an eigenvalue spectrum, following WeightWatcher 0.7.7's in-house ``WWFit`` (fit='PL').

Conventions (each matches ``weightwatcher/WW_powerlaw.py: WWFit.fit_power_law_standard`` unless marked *ours*):

* Candidates for x_min are the sorted eigenvalues except the largest (index-based, so repeated values are separate
  candidates); xmax is the largest eigenvalue.
* For the tail x_i <= ... <= x_{N-1} (n = N - i points) the continuous MLE is alpha = 1 + n / sum_j ln(x_j / x_i).
* KS distance: max_k |1 - (x_{i+k} / x_i)^(1 - alpha) - k / n| over k = 0..n-1, i.e. WW's one-sided comparison of the
  fitted CDF with the empirical CDF's lower step k/n.
* x_min is the first candidate with the smallest KS distance; sigma = (alpha - 1) / sqrt(n).
* *ours*: a candidate whose alpha is not finite (a tail of identical values) gets distance 1, like WW's alpha <= 1 case;
  if no candidate is finite the spectrum is degenerate and ``fit_power_law`` raises ``ValueError``.
* *ours*: WW 0.7.7 switches to a bias-corrected, tail-size-penalised estimator when fewer than 20 eigenvalues enter the
  fit (``fit_powerlaw_smallN``); we always use the standard estimator above, so alphas differ from WW there.
"""

from dataclasses import dataclass

import torch

# Elements of one (candidates x eigenvalues) block of the KS scan: 2**21 float64 values is 16 MiB per temporary.
_BLOCK_ELEMENTS = 2**21


@dataclass(frozen=True)
class PowerLawFit:
    """Result of the x_min scan: the chosen tail's exponent, bounds, KS distance and standard error.

    ``num_tail`` is the index-based tail size n used in alpha and sigma; with values tied to x_min below the chosen
    index it is smaller than the count of eigenvalues >= x_min, which WW reports as num_pl_spikes.
    """

    alpha: float
    xmin: float
    xmax: float
    ks_distance: float
    sigma: float
    num_tail: int


def fit_power_law(evals: torch.Tensor) -> PowerLawFit:
    """Fit p(x) ~ x^-alpha to the tail of positive ``evals``, choosing x_min by minimal KS distance (WW conventions).

    All candidates are scanned in float64 blocks of rows (candidate x_min) against columns (tail eigenvalues), so there
    is no Python loop over eigenvalues and memory stays at a few 16 MiB temporaries whatever the spectrum size.
    """
    x = torch.sort(evals.detach().to("cpu", torch.float64).flatten()).values
    if x.numel() < 2 or not bool(torch.all(x > 0)) or not bool(torch.all(torch.isfinite(x))):
        raise ValueError("power-law fit needs at least two positive, finite eigenvalues")
    num = x.numel()
    # Logs relative to the largest value keep the tail sums small, so cancellation in s_i stays at round-off level.
    logs = torch.log(x) - torch.log(x[-1])
    suffix_sums = torch.flip(torch.cumsum(torch.flip(logs, (0,)), 0), (0,))
    idx = torch.arange(num - 1, dtype=torch.float64)
    n_tail = num - idx
    log_excess = suffix_sums[:-1] - n_tail * logs[:-1]  # sum_{j >= i} ln(x_j / x_i), >= 0
    alphas = 1.0 + n_tail / log_excess  # +inf where the tail is flat (torch divides by zero without raising)
    valid = torch.isfinite(alphas) & (alphas > 1.0)
    if not bool(valid.any()):
        raise ValueError("degenerate spectrum: every candidate tail consists of identical eigenvalues")

    ks = torch.ones(num - 1, dtype=torch.float64)
    rows_per_block = max(1, _BLOCK_ELEMENTS // num)
    cols = torch.arange(num, dtype=torch.float64)
    for start in range(0, num - 1, rows_per_block):
        stop = min(start + rows_per_block, num - 1)
        offset = cols[None, start:] - idx[start:stop, None]  # k = j - i; negative left of the candidate
        ratio = x[None, start:] / x[start:stop, None]
        fitted = 1.0 - ratio ** (1.0 - alphas[start:stop, None])
        gap = torch.abs(fitted - offset / n_tail[start:stop, None])
        gap = torch.where(offset >= 0, gap, torch.zeros((), dtype=torch.float64))
        ks[start:stop] = torch.where(valid[start:stop], gap.amax(dim=1), ks[start:stop])

    best = int(torch.argmin(ks))  # first minimum, like numpy's argmin in WW
    alpha = float(alphas[best])
    n_best = int(n_tail[best])
    return PowerLawFit(
        alpha=alpha,
        xmin=float(x[best]),
        xmax=float(x[-1]),
        ks_distance=float(ks[best]),
        sigma=(alpha - 1.0) / n_best**0.5,
        num_tail=n_best,
    )
