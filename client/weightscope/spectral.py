"""Spectral Alignment (SA) math as pure torch functions.

Definition (our reading of arXiv:2510.04202, see reference/analyses.md B.3): for a weight W (d_out x d_in) with top
singular triple (sigma1, u1, v1), the alignment of an input x_t is SA_t = <x_t, v1> / |x_t| in [-1, 1]. Inputs are
*not* centered (centering erased the signal in our probe). The choice of singular vector is explicit: ``space="input"``
pairs layer inputs with v1, ``space="output"`` pairs layer outputs with u1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


# Lanczos: steps per cycle (the Krylov basis kept in memory; the cycle restarts from its Ritz vector), the steps
# between convergence checks (each one an eigendecomposition of a small tridiagonal matrix and a host sync), and the
# tolerance below which float32 cannot be trusted to resolve the residual
_KRYLOV = 32
_CHECK_EVERY = 4
_FLOAT32_TOL = 1e-5


def top_singular_batch(
    weights: Sequence[torch.Tensor],
    v0s: Sequence[torch.Tensor | None] | None = None,
    *,
    max_iters: int | Sequence[int] = 20,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    max_batch_bytes: int = 64 << 20,
) -> list[TopSingular]:
    """Top singular triples of many 2-D matrices at once: Lanczos on W^T W, all matrices in lockstep.

    Each matrix gets at most ``max_iters`` products with W^T W (one budget, or one per matrix), warm-started from
    ``v0s[i]`` when it is usable (finite, non-zero, of the matrix's input size; else from a random vector drawn from
    ``generator``). Krylov bases of up to 32 vectors are kept fully reorthogonalised (then the iteration restarts from
    its Ritz vector). A matrix is done when the relative residual ``|W^T W v - sigma^2 v| / sigma^2`` of its Ritz
    pair is at most ``tol`` (it bounds the angle between v and the true v1 by residual / relative gap of sigma1^2 and
    sigma2^2), checked every 4 products; its products stop when all matrices of its shape are done. For the same
    number of products Lanczos is far more accurate than power iteration when sigma1 and sigma2 are close, as they
    are in most trained layers. ``TopSingular.residual`` is that relative residual, ``iterations`` the products used
    by the batch.

    Signs as in :func:`top_singular`: v is aligned with a usable ``v0`` (continuous between steps), else its largest
    entry is positive. ``dtype`` defaults to float64 for float64 weights or when ``tol`` is below float32's reach
    (1e-5), else float32. A matrix with non-finite entries keeps its starting vector as v, with sigma = |W v| (inf or
    NaN) and u = W v / sigma (NaN where W v is), as :func:`top_singular` does; a zero matrix gives sigma 0 and u 0. The products of same-shape matrices are batched (their
    weights stacked, copied, in chunks of at most ``max_batch_bytes``; a matrix alone in its chunk is used in place).
    """
    n_mats = len(weights)
    v0s = list(v0s) if v0s is not None else [None] * n_mats
    budgets = [int(max_iters)] * n_mats if isinstance(max_iters, int) else [int(b) for b in max_iters]
    if len(v0s) != n_mats or len(budgets) != n_mats:
        raise ValueError("weights, v0s and max_iters must have the same length")
    for w in weights:
        if w.ndim != 2:
            raise ValueError(f"expected 2-D matrices, got shape {tuple(w.shape)}")
    dtypes = [dtype or (torch.float64 if w.dtype == torch.float64 or tol < _FLOAT32_TOL else torch.float32)
              for w in weights]
    keys = [(str(w.device), str(dt), max(1, budget)) for w, dt, budget in zip(weights, dtypes, budgets, strict=True)]
    order = sorted(range(n_mats), key=lambda i: (keys[i], tuple(weights[i].shape)))
    batches: list[list[int]] = []
    for i in order:  # one batch per device, dtype and budget, bounded in memory (Krylov basis of every matrix)
        if batches and keys[batches[-1][0]] == keys[i]:
            n_max = max(weights[i].shape[1], *(weights[j].shape[1] for j in batches[-1]))
            if (len(batches[-1]) + 1) * (_KRYLOV + 4) * n_max * torch.finfo(dtypes[i]).bits // 8 <= max_batch_bytes:
                batches[-1].append(i)
                continue
        batches.append([i])
    # start vectors in matrix order, so that the generator is drawn as the per-matrix function would draw it
    usable = _usable_starts(weights, v0s)
    randoms = {i: torch.randn(weights[i].shape[1], generator=generator, dtype=dtypes[i])
               for i in range(n_mats) if usable[i] is None}
    results: list[TopSingular | None] = [None] * n_mats
    for batch in batches:
        i = batch[0]
        starts = [usable[j] if usable[j] is not None else randoms[j] for j in batch]
        tops = _lanczos([weights[j] for j in batch], starts, [usable[j] is not None for j in batch], dtypes[i],
                        keys[i][2], tol, max_batch_bytes)
        for j, top in zip(batch, tops, strict=True):
            results[j] = top
    return results  # type: ignore[return-value]


def _usable_starts(weights: Sequence[torch.Tensor], v0s: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each v0 that is finite, non-zero and of its matrix's input size, else None (one host sync for all)."""
    shaped = [i for i, (w, v0) in enumerate(zip(weights, v0s, strict=True))
              if v0 is not None and v0.shape == (w.shape[1],)]
    out: list[torch.Tensor | None] = [None] * len(weights)
    if shaped:
        vs = [v0s[i].detach() for i in shaped]  # type: ignore[union-attr]
        device = vs[0].device
        if all(v.device == device and v.dtype == vs[0].dtype for v in vs) and hasattr(torch, "_foreach_norm"):
            norms = torch.stack(list(torch._foreach_norm(vs))).tolist()  # one fused reduction
        else:
            norms = torch.stack([torch.linalg.vector_norm(v).to(device=device, dtype=torch.float64)
                                 for v in vs]).tolist()
        for i, v, norm in zip(shaped, vs, norms, strict=True):
            if math.isfinite(norm) and norm > 0:
                out[i] = v
    return out


def _lanczos(mats: list[torch.Tensor], starts: list[torch.Tensor], follow: list[bool], dt: torch.dtype,
             budget: int, tol: float, max_batch_bytes: int) -> list[TopSingular]:
    """Top singular triples of ``mats`` (sorted by shape, one device) from ``starts``; v keeps the sign of its start
    where ``follow``, else its largest entry is positive. See :func:`top_singular_batch`."""
    b = len(mats)
    device = mats[0].device
    dims = [m.shape[1] for m in mats]
    n_max = max(dims)
    tiny = torch.finfo(dt).tiny
    # row vectors (B, 1, n_max), zero past each matrix's input size, so that every product is a batched matmul
    start = torch.nn.utils.rnn.pad_sequence([s.to(device=device, dtype=dt) for s in starts], batch_first=True)
    start = (start / torch.linalg.vector_norm(start, dim=1, keepdim=True).clamp_min(tiny)).unsqueeze(1)
    # same-shape runs as stacked batches: (rows, W (g, m, n), W^T view, the rows' views of q and z)
    q = start.clone()
    z = torch.zeros_like(q)
    blocks: list[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    i = 0
    while i < b:
        j = i + 1
        per = max(1, max_batch_bytes // max(1, mats[i].numel() * torch.finfo(dt).bits // 8))
        while j < b and j - i < per and mats[j].shape == mats[i].shape:
            j += 1
        w = (mats[i].detach().to(dt).unsqueeze(0) if j == i + 1
             else torch.stack([m.detach() for m in mats[i:j]]).to(dt))
        n = dims[i]
        blocks.append((slice(i, j), w, w.transpose(1, 2), q[i:j, :, :n], z[i:j, :, :n]))
        i = j
    cut = torch.finfo(dt).eps ** 0.5
    bad = torch.zeros(b, 1, 1, dtype=torch.bool, device=device)  # matrices with non-finite or zero products
    iterations = 0
    residual = torch.full((b,), math.inf, dtype=torch.float64)
    y = torch.ones(b, 1, dtype=torch.float64)
    basis = q
    while iterations < budget:
        k = min(n_max, _KRYLOV, budget - iterations)
        basis = q.new_zeros(b, k, n_max)
        # Each matrix's Krylov space ends at its `stop` (the last basis index it keeps): at its input size (its
        # Krylov vectors are then exhausted), when a beta falls to rounding level (sqrt(eps) of the largest alpha:
        # an invariant subspace; the vector after it would be noise), or when it has converged. The beta after the
        # stop leaves T but stays in the residual, which so stays honest; later steps of that matrix are zeroed out
        # of T and, from the next check on, out of the products. Both rules are applied at the checks.
        stop = torch.tensor([min(n, k) - 1 for n in dims])
        stopped = torch.zeros(b, dtype=torch.bool)  # stop reached and acted on
        ys = torch.zeros(b, k, dtype=torch.float64)
        res = torch.full((b,), math.inf, dtype=torch.float64)
        running = list(blocks)
        alphas: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        for j in range(k):
            basis[:, j:j + 1] = q
            for _, w, wt, qv, zv in running:  # z = W^T W q for every matrix still running
                torch.bmm(torch.bmm(qv, wt), w, out=zv)
            if iterations == 0:  # a non-finite or zero product is left out (z = 0); the results are the start's
                bad = (~torch.isfinite(z).all(dim=2, keepdim=True)) | (z == 0).all(dim=2, keepdim=True)
            z.masked_fill_(bad, 0)
            iterations += 1
            prev = basis[:, :j + 1]
            prev_t = prev.transpose(1, 2)
            h = torch.bmm(z, prev_t)  # full reorthogonalisation, twice (classical Gram-Schmidt)
            r = torch.baddbmm(z, h, prev, alpha=-1)
            r = torch.baddbmm(r, torch.bmm(r, prev_t), prev, alpha=-1)
            norm = torch.linalg.vector_norm(r, dim=2, keepdim=True)
            torch.div(r, norm.clamp_min(tiny), out=q)
            alphas.append(h[:, :, j:j + 1])
            norms.append(norm)
            if (j + 1) % _CHECK_EVERY and j + 1 < k:
                continue
            both = torch.cat([torch.cat(alphas, dim=2), torch.cat(norms, dim=2)], dim=1)
            a_, n_ = both.to(device="cpu", dtype=torch.float64).unbind(1)  # (B, j + 1) each
            idx = torch.arange(j + 1)
            small = n_ <= cut * torch.cummax(a_, dim=1).values  # W^T W is positive semi-definite: alpha >= 0
            first_small = torch.where(small, idx, k).min(dim=1).values
            stop = torch.where(stopped, stop, torch.minimum(stop, first_small))
            # the matrices still open before this check get their Ritz pair now (the others keep theirs)
            rows = (~stopped).nonzero().squeeze(1)
            last = torch.minimum(stop[rows], torch.tensor(j)).unsqueeze(1)
            inside = idx <= last
            diag = torch.where(inside, a_[rows], 0)
            off = torch.where(idx[:-1] < last, n_[rows, :-1], 0)
            tri = torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
            theta, vecs = torch.linalg.eigh(tri)
            ys[rows, :j + 1] = vecs[:, :, -1]
            # |W^T W Q y - theta Q y| = beta_last * |y_last|: beta_j, or the beta after the stop
            outside = n_[rows].gather(1, last).squeeze(1)
            res[rows] = outside * ys[rows].gather(1, last).squeeze(1).abs() / theta[:, -1].clamp_min(
                torch.finfo(torch.float64).tiny)
            converged = res <= tol
            stop = torch.where(converged & (stop > j), torch.tensor(j), stop)
            newly = (stop <= j) & ~stopped
            stopped |= newly
            if bool(stopped.all()) or iterations >= budget:
                basis = basis[:, :j + 1]
                break
            if bool(newly.any()):  # out of the products from now on
                q[newly.nonzero().squeeze(1).to(device)] = 0
                running = [blk for blk in blocks if not bool(stopped[blk[0]].all())]
                for blk in blocks:
                    if blk not in running:
                        blk[4].zero_()
        y, residual = ys[:, :basis.shape[1]], res
        q.copy_(torch.bmm(y.to(device=device, dtype=dt).unsqueeze(1), basis))
        q.div_(torch.linalg.vector_norm(q, dim=2, keepdim=True).clamp_min(tiny))
        if bool((residual <= tol).all()):
            break
    v = torch.where(bad.squeeze(1), start.squeeze(1), q.squeeze(1))
    # sign: follow the start vector (the previous step's v), else the largest entry positive
    follow_t = torch.tensor(follow, device=device)
    largest = v.gather(1, v.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    flip = torch.where(follow_t, (v * start.squeeze(1)).sum(dim=1) < 0, largest < 0)
    v = v * (1 - 2 * flip.to(dt)).unsqueeze(1)
    wvs = [torch.bmm(v[rows].unsqueeze(1)[:, :, :w.shape[2]], wt).squeeze(1) for rows, w, wt, _, _ in blocks]
    sig = [torch.linalg.vector_norm(wv, dim=1, keepdim=True) for wv in wvs]
    us = [wv / s.clamp_min(tiny) for wv, s in zip(wvs, sig, strict=True)]
    sigmas = torch.cat(sig).squeeze(1).tolist() if sig else []
    row_u: dict[int, torch.Tensor] = {}
    row_sigma: dict[int, float] = {}
    pos = 0
    for (rows, *_), u in zip(blocks, us, strict=True):
        for r in range(rows.start, rows.stop):
            row_u[r], row_sigma[r] = u[r - rows.start], sigmas[pos]
            pos += 1
    residuals = torch.where(bad.view(-1).cpu(), math.nan, residual).tolist()
    return [TopSingular(row_sigma[i], row_u[i], v[i, :n], iterations, 0.0 if row_sigma[i] == 0 else residuals[i])
            for i, n in enumerate(dims)]


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
    names = summary_names(quantiles, hist_bins)
    return dict(zip(names, sa_summary_table([sa], eps=eps, quantiles=quantiles, hist_bins=hist_bins)[0].tolist(),
                    strict=True))


def summary_names(quantiles: tuple[float, ...] = DEFAULT_QUANTILES, hist_bins: int = DEFAULT_HIST_BINS) -> list[str]:
    """The metric names of :func:`sa_summary`, in the column order of :func:`sa_summary_table`."""
    return (["sa_sign_diversity", "sa_pos_frac", "sa_abs_mean", "sa_count", "sa_nonfinite"]
            + [quantile_name(q) for q in quantiles] + [f"sa_hist_{i:02d}" for i in range(hist_bins)])


def sa_summary_table(
    sas: Sequence[torch.Tensor],
    *,
    eps: float = DEFAULT_EPS,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    hist_bins: int = DEFAULT_HIST_BINS,
) -> torch.Tensor:
    """:func:`sa_summary` of many layers at once, without a host sync: a float64 tensor (layers x metrics), columns
    as :func:`summary_names`, on the values' device. One sort of the padded values gives every quantile (linear
    interpolation, as ``torch.quantile``); the histogram bins by ``torch.histc``'s rule."""
    if not sas:
        return torch.empty(0, len(summary_names(quantiles, hist_bins)), dtype=torch.float64)
    flat = [s.detach().reshape(-1) for s in sas]
    device, dtype = flat[0].device, flat[0].dtype
    if any(f.device != device or f.dtype != dtype for f in flat) or not dtype.is_floating_point:
        dtype = torch.float64
        flat = [f.to(device=device, dtype=dtype) for f in flat]
    lengths = torch.tensor([f.numel() for f in flat], dtype=torch.float64, device=device)
    # padded with NaN (not finite, so left out of everything) in the values' own dtype; compared and binned in
    # float64, as the one-layer summary always was; sorted in the own dtype (the same order, the same values)
    padded = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=math.nan)
    if padded.shape[1] == 0:  # only empty layers: one NaN column keeps the gathers below in bounds
        padded = torch.full((len(flat), 1), math.nan, dtype=dtype, device=device)
    x = padded.to(torch.float64)
    finite = torch.isfinite(x)
    n_finite = finite.sum(dim=1, dtype=torch.float64)
    counted = finite & (x.abs() >= eps)
    n = counted.sum(dim=1, dtype=torch.float64)
    pos = (counted & (x > 0)).sum(dim=1, dtype=torch.float64)
    nan = torch.full_like(n, math.nan)
    sd = torch.where(n > 0, 2.0 * torch.minimum(pos, n - pos) / n, nan)
    pos_frac = torch.where(n > 0, pos / n, nan)
    values = torch.where(finite, x, 0.0)
    abs_mean = torch.where(n_finite > 0, values.abs().sum(dim=1) / n_finite, nan)
    # quantiles: non-finite values and padding sort to the end as +inf; each row's finite prefix is its sample
    ordered = _sorted_rows(torch.where(finite, padded, math.inf))
    q = torch.tensor(quantiles, dtype=torch.float64, device=device)
    ranks = q.unsqueeze(0) * (n_finite - 1).clamp_min(0).unsqueeze(1)  # (layers, quantiles)
    below = ranks.to(torch.long)
    above = ranks.ceil().to(torch.long)
    lo = ordered.gather(1, below).to(torch.float64)
    hi = ordered.gather(1, above).to(torch.float64)
    qs = torch.where(n_finite.unsqueeze(1) > 0, lo.lerp(hi, ranks - below), math.nan)
    # histogram: bin = trunc((v + 1) * bins / 2) on values clamped to [-1, 1], the last bin closed (torch.histc)
    clamped = values.clamp(-1.0, 1.0)
    idx = ((clamped - (-1.0)) * hist_bins / 2.0).to(torch.long).clamp_max(hist_bins - 1)
    counts = torch.zeros(len(flat), hist_bins, dtype=torch.float64, device=device)
    counts.scatter_add_(1, idx, finite.to(torch.float64))
    hist = torch.where(n_finite.unsqueeze(1) > 0, counts / n_finite.clamp_min(1).unsqueeze(1), math.nan)
    head = torch.stack([sd, pos_frac, abs_mean, n, lengths - n_finite], dim=1)
    return torch.cat([head, qs, hist], dim=1)


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of a 2-D tensor sorted ascending. On the CPU numpy's sort is several times faster than torch.sort
    for many short rows; elsewhere, or without numpy, torch.sort."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        try:
            import numpy as np
        except ImportError:
            pass
        else:
            return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return x.sort(dim=1).values


def quantile_name(q: float) -> str:
    """Metric name of quantile q: 0.05 -> sa_q05, 0.5 -> sa_q50, 0.995 -> sa_q99.5."""
    pct = round(q * 100, 6)
    return f"sa_q{int(pct):02d}" if pct == int(pct) else f"sa_q{pct:g}"
