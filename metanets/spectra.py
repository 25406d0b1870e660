"""``weight_spectra`` analysis: per-matrix singular values, norms, ranks and a WeightWatcher-style power-law alpha.

Conventions (WeightWatcher 0.7.7 = WW; see ../shared/reference/analyses.md part D):

* Matrices: every floating tensor with ndim >= 2; ndim > 2 is reshaped to (shape[0], prod(shape[1:])), so a conv kernel
  (out, in, kh, kw) becomes one (out, in*kh*kw) matrix. WW instead takes the kh*kw slices W[:, :, i, j] and pools their
  eigenvalues, so conv alphas are not comparable with WW's. 1-D and non-floating tensors are ignored.
* Arithmetic: float64 on CPU, one matrix at a time. Singular values are orientation-free, so WW's N >= M transposition
  (which only matters for its Marchenko-Pastur fit, not computed here) changes nothing.
* Eigenvalues lambda = sigma**2 with no 1/N normalisation (WW), so norm metrics grow with width and init scale.
  ``lambda_max`` = sigma_max**2, ``log_norm`` = log10(sum lambda) = log10 ||W||_F**2 and ``log_spectral_norm`` =
  log10(lambda_max) follow WW; ``spectral_norm`` and ``frobenius_norm`` are the unsquared sigma_max and ||W||_F.
* Fit input: eigenvalues of numerically non-zero singular values, sigma > sigma_max * max(N, M) * eps (numpy's
  matrix_rank tolerance) with eps of float64 for float64 weights and of float32 otherwise, so the rounding floor of a
  low-rank float32 matrix is not fitted (a 16-bit eps times max(N, M) would exceed sigma_max). WW drops lambda <= 1e-5
  instead; ours is relative so alpha is invariant to scaling W.
* ``min_evals``: the fit is skipped (alpha fields None, ``fit_skipped`` says why) when fewer eigenvalues than this enter
  it. WW skips the whole layer when min(N, M) < min_evals; for full-rank matrices the counts agree.
* Power-law fit: ``metanets.powerlaw.fit_power_law`` (WW's fit='PL' estimator). ``alpha_weighted`` = alpha *
  log10(lambda_max); ``warning`` is 'over-trained' for alpha < 2, 'under-trained' for alpha > 6, else None (WW: "").
* ``effective_rank``: Roy & Vetterli (2007), exp of the Shannon entropy of p_i = sigma_i / sum_j sigma_j.
"""

import math
from collections.abc import Callable, Iterable, Sized

import torch

from metanets.powerlaw import fit_power_law

ANALYSIS_VERSION = "weight_spectra/1"

OVER_TRAINED_ALPHA = 2.0
UNDER_TRAINED_ALPHA = 6.0

_FIT_KEYS = ("alpha", "alpha_weighted", "xmin", "xmax", "ks_distance", "alpha_sigma", "num_pl_spikes", "warning")
_METRIC_KEYS = (
    "singular_values",
    "spectral_norm",
    "frobenius_norm",
    "stable_rank",
    "effective_rank",
    "lambda_max",
    "log_norm",
    "log_spectral_norm",
)
SUMMARY_KEYS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank")


def weight_spectra(
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    min_evals: int = 10,
    progress: Callable[[float], None] | None = None,
) -> list[dict]:
    """Analyse every floating tensor with ndim >= 2 and return one JSON-serialisable dict per matrix, in input order.

    ``progress(fraction)`` is called after each input tensor. A non-Sized iterable is first collected into a list (of
    references) to know the total; pass a Sized collection such as ``dict.items()`` to keep lazy loading lazy.
    """
    if min_evals < 2:
        raise ValueError("min_evals must be at least 2: a fit needs one x_min candidate below the largest eigenvalue")
    items = tensors if isinstance(tensors, Sized) else list(tensors)
    total = len(items)
    layers = []
    for done, (name, tensor) in enumerate(items, start=1):
        if tensor.ndim >= 2 and tensor.is_floating_point():
            layers.append(_analyse_matrix(name, tensor, min_evals))
        if progress is not None:
            progress(done / total)
    return layers


def summary(layers: list[dict]) -> dict:
    """Means of alpha, alpha_weighted, log_norm, log_spectral_norm and stable_rank over the layers that have them.

    Like WW's ``get_summary`` (pandas means skip missing values); a metric no layer has is None.
    """
    out: dict = {"num_layers": len(layers), "num_fitted": sum(layer["alpha"] is not None for layer in layers)}
    for key in SUMMARY_KEYS:
        values = [layer[key] for layer in layers if layer[key] is not None]
        out[key] = math.fsum(values) / len(values) if values else None
    return out


def _analyse_matrix(name: str, tensor: torch.Tensor, min_evals: int) -> dict:
    """Spectral metrics and power-law fit of one tensor, reshaped to (shape[0], prod(shape[1:]))."""
    matrix = tensor.detach().to("cpu", torch.float64).reshape(tensor.shape[0], math.prod(tensor.shape[1:]))
    record: dict = {
        "name": name,
        "shape": list(tensor.shape),
        "matrix_shape": list(matrix.shape),
        "skipped": None,
        "fit_skipped": None,
        **dict.fromkeys(_METRIC_KEYS + _FIT_KEYS),
    }
    if matrix.numel() == 0:
        record["skipped"] = "empty matrix"
        return record
    if not bool(torch.isfinite(matrix).all()):
        record["skipped"] = "matrix contains NaN or Inf"
        return record
    if not bool(matrix.any()):
        record["skipped"] = "all-zero matrix"
        return record

    sv = torch.linalg.svdvals(matrix)  # descending
    del matrix
    evals = sv**2
    lambda_max = float(evals[0])
    norm = float(evals.sum())
    p = sv[sv > 0] / sv.sum()
    record.update(
        singular_values=sv.tolist(),
        spectral_norm=float(sv[0]),
        frobenius_norm=math.sqrt(norm),
        stable_rank=norm / lambda_max,
        effective_rank=math.exp(float(-(p * torch.log(p)).sum())),
        lambda_max=lambda_max,
        log_norm=math.log10(norm),
        log_spectral_norm=math.log10(lambda_max),
    )

    eps = torch.finfo(torch.promote_types(tensor.dtype, torch.float32)).eps
    tol = float(sv[0]) * max(record["matrix_shape"]) * eps
    fit_evals = evals[sv > tol]
    if fit_evals.numel() < min_evals:
        record["fit_skipped"] = f"{fit_evals.numel()} non-zero eigenvalues < min_evals={min_evals}"
        return record
    try:
        fit = fit_power_law(fit_evals)
    except ValueError as err:
        record["fit_skipped"] = str(err)
        return record
    record.update(
        alpha=fit.alpha,
        alpha_weighted=fit.alpha * record["log_spectral_norm"],
        xmin=fit.xmin,
        xmax=fit.xmax,
        ks_distance=fit.ks_distance,
        alpha_sigma=fit.sigma,
        num_pl_spikes=int((evals >= fit.xmin).sum()),
        warning=_warning(fit.alpha),
    )
    return record


def _warning(alpha: float) -> str | None:
    """WW's quality label for a layer's alpha."""
    if alpha < OVER_TRAINED_ALPHA:
        return "over-trained"
    if alpha > UNDER_TRAINED_ALPHA:
        return "under-trained"
    return None
