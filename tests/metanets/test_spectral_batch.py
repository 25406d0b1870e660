"""The batched SA math the SpectralMonitor uses: Lanczos top singular triples of many matrices at once
(``top_singular_batch``) and the one-sort summary of many layers (``sa_summary_table``), checked against full SVDs, the
per-matrix power iteration and the previous one-layer-at-a-time summary."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightscope.spectral import (
    quantile_name, sa_summary, sa_summary_table, sign_counts, summary_names, top_singular, top_singular_batch,
)

seeds = st.integers(min_value=0, max_value=2**31 - 1)
shapes = st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24)), min_size=1, max_size=6)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gapped(g: torch.Generator, m: int, n: int, ratio: float = 0.5) -> torch.Tensor:
    """Random m x n matrix with sigma2 / sigma1 <= ratio."""
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    k = min(m, n)
    s = ratio * torch.sort(torch.rand(k, generator=g, dtype=torch.float64), descending=True).values
    s[0] = 1.0 + float(torch.rand(1, generator=g, dtype=torch.float64))
    s[1:] *= s[0]
    return (u[:, :k] * s) @ v[:, :k].T


def _angle_error(v: torch.Tensor, w: torch.Tensor) -> float:
    """1 - |cos(v, v1)| with v1 from a full SVD."""
    v1 = torch.linalg.svd(w.double())[2][0]
    return 1.0 - abs(float(v.double() @ v1)) / float(v.double().norm())


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dims=shapes)
def test_batch_agrees_with_svd_for_mixed_shapes(seed, dims):
    g = _gen(seed)
    ws = [_gapped(g, m, n) for m, n in dims]
    tops = top_singular_batch(ws, max_iters=200, tol=1e-12, generator=g)
    for w, top in zip(ws, tops, strict=True):
        s = torch.linalg.svdvals(w)
        assert top.v.dtype == torch.float64 and top.v.shape == (w.shape[1],) and top.u.shape == (w.shape[0],)
        assert math.isclose(top.sigma, float(s[0]), rel_tol=1e-9)
        assert _angle_error(top.v, w) < 1e-9
        assert torch.allclose(w @ top.v, top.sigma * top.u, atol=1e-8)
        assert top.iterations <= 200


@settings(max_examples=30, deadline=None)
@given(seed=seeds, dims=shapes)
def test_batch_matches_per_matrix_power_iteration_and_its_signs(seed, dims):
    g = _gen(seed)
    ws = [_gapped(g, m, n, ratio=0.3) for m, n in dims]
    cold = top_singular_batch(ws, max_iters=200, tol=1e-12, generator=_gen(seed))
    for w, top in zip(ws, cold, strict=True):
        ref = top_singular(w, max_iters=2000, tol=1e-14, generator=_gen(seed))
        assert math.isclose(top.sigma, ref.sigma, rel_tol=1e-9)
        # without a previous vector both put the largest entry of v positive
        assert torch.allclose(top.v, ref.v, atol=1e-7)
    prev = [-t.v for t in cold]  # with one, both follow its sign
    warm = top_singular_batch(ws, prev, max_iters=200, tol=1e-12)
    for w, top, p in zip(ws, warm, prev, strict=True):
        ref = top_singular(w, p, max_iters=2000, tol=1e-14)
        assert torch.allclose(top.v, ref.v, atol=1e-7)
        assert float(top.v @ p) > 0


def test_warm_start_converges_early_and_keeps_its_sign():
    g = _gen(11)
    ws = [_gapped(g, 30, 20), _gapped(g, 30, 20), _gapped(g, 10, 40)]
    cold = top_singular_batch(ws, max_iters=500, tol=1e-12)
    nudged = [w + 1e-6 * torch.randn(w.shape, generator=g, dtype=torch.float64) for w in ws]
    prev = [-t.v for t in cold]
    warm = top_singular_batch(nudged, prev, max_iters=500, tol=1e-6)
    assert all(t.iterations <= 4 for t in warm)  # the first convergence check
    assert all(t.residual <= 1e-6 for t in warm)
    assert all(float(t.v @ p) > 0.999 for t, p in zip(warm, prev, strict=True))


def test_budget_is_respected_per_matrix():
    g = _gen(12)
    ws = [torch.randn(64, 48, generator=g) for _ in range(3)]
    tops = top_singular_batch(ws, max_iters=[5, 5, 37], tol=0.0, dtype=torch.float32)
    assert [t.iterations for t in tops] == [5, 5, 37]  # 37 = a full 32-vector cycle, then a restart
    assert all(math.isfinite(t.residual) for t in tops)


def test_reported_residual_is_the_real_one():
    g = _gen(13)
    ws = [torch.randn(50, 40, generator=g, dtype=torch.float64), torch.randn(40, 40, generator=g, dtype=torch.float64)]
    for top, w in zip(top_singular_batch(ws, max_iters=6, tol=0.0), ws, strict=True):
        a = w.T @ w
        lam = float(top.v @ a @ top.v)
        real = float((a @ top.v - lam * top.v).norm()) / lam
        assert top.residual == pytest.approx(real, rel=1e-3)


def test_lanczos_beats_power_iteration_for_close_singular_values():
    g = _gen(14)
    u, _ = torch.linalg.qr(torch.randn(128, 128, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(128, 128, generator=g, dtype=torch.float64))
    s = torch.linspace(1.0, 0.1, 128, dtype=torch.float64)
    s[1] = 0.98  # sigma2 / sigma1 = 0.98, as in the benchmark GPT's layers
    w = (u * s) @ v.T
    start = torch.randn(128, generator=g, dtype=torch.float64)
    lanczos = top_singular_batch([w], [start], max_iters=20, tol=0.0)[0]
    power = top_singular(w, start, max_iters=20, tol=0.0)
    assert lanczos.iterations == power.iterations == 20
    assert _angle_error(lanczos.v, w) < 1e-4 and _angle_error(lanczos.v, w) < _angle_error(power.v, w) / 100


def test_degenerate_matrices_do_not_disturb_the_others():
    g = _gen(15)
    good = _gapped(g, 12, 8).float()
    rank_one = torch.outer(torch.randn(6, generator=g), torch.randn(40, generator=g))
    inf = torch.randn(12, 8, generator=g)
    inf[3, 2] = math.inf
    nan = torch.randn(12, 8, generator=g)
    nan[0, 0] = math.nan
    ws = [good, torch.zeros(12, 8), inf, nan, rank_one, torch.randn(7, 1, generator=g), torch.randn(1, 9, generator=g)]
    tops = top_singular_batch(ws, max_iters=30, tol=1e-5, generator=g)
    assert [t.v.dtype for t in tops] == [torch.float32] * len(ws)
    assert tops[0].sigma == pytest.approx(float(torch.linalg.svdvals(good.double())[0]), rel=1e-6)
    assert tops[1].sigma == 0.0 and not tops[1].u.any() and float(tops[1].v.norm()) == pytest.approx(1.0)
    assert tops[2].sigma == math.inf and torch.isnan(tops[2].u).any() and torch.isfinite(tops[2].v).all()
    assert math.isnan(tops[3].sigma) and torch.isnan(tops[3].u).any()
    for top, w in zip(tops[2:4], ws[2:4], strict=True):  # as the per-matrix function: v is the start, sigma = |W v|
        ref = top_singular(w, top.v)
        assert torch.allclose(ref.v, top.v.double(), atol=1e-6) and math.isnan(top.residual)
        assert (ref.sigma == top.sigma == math.inf) or (math.isnan(ref.sigma) and math.isnan(top.sigma))
    for top, w in zip(tops[4:], ws[4:], strict=True):  # Krylov spaces exhausted early, in float32
        assert top.sigma == pytest.approx(float(torch.linalg.svdvals(w.double())[0]), rel=1e-5)
        assert _angle_error(top.v, w) < 1e-5


def test_small_batch_memory_bound_gives_the_same_results():
    g = _gen(16)
    ws = [_gapped(g, 20, 16) for _ in range(5)] + [_gapped(g, 16, 20) for _ in range(3)]
    prev = [torch.randn(w.shape[1], generator=g, dtype=torch.float64) for w in ws]
    whole = top_singular_batch(ws, prev, max_iters=40, tol=1e-10)
    pieces = top_singular_batch(ws, prev, max_iters=40, tol=1e-10, max_batch_bytes=4096)
    for a, b in zip(whole, pieces, strict=True):
        assert a.sigma == pytest.approx(b.sigma, rel=1e-10)
        assert torch.allclose(a.v, b.v, atol=1e-8)


def test_float32_default_tolerance_is_accurate_enough():
    g = _gen(17)
    ws = [_gapped(g, 96, 64, ratio=0.8).float() for _ in range(4)]
    for top, w in zip(top_singular_batch(ws, max_iters=20, generator=g), ws, strict=True):
        assert top.v.dtype == torch.float32
        assert top.residual <= 1e-4
        assert top.sigma == pytest.approx(float(torch.linalg.svdvals(w.double())[0]), rel=1e-5)
        assert _angle_error(top.v, w) < 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError):
        top_singular_batch([torch.ones(3)])
    with pytest.raises(ValueError):
        top_singular_batch([torch.ones(3, 3)], [None, None])


# -- summaries ------------------------------------------------------------------------------------------------------

def _reference_summary(sa, eps=1e-3, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95), hist_bins=10):
    """The one-layer summary as it was before it was batched: torch.quantile and torch.histc."""
    flat = sa.detach().reshape(-1).to(torch.float64)
    finite = flat[torch.isfinite(flat)]
    pos, n = sign_counts(finite, eps)
    out = {
        "sa_sign_diversity": 2.0 * min(pos, n - pos) / n if n else math.nan,
        "sa_pos_frac": pos / n if n else math.nan,
        "sa_abs_mean": float(finite.abs().mean()) if finite.numel() else math.nan,
        "sa_count": float(n),
        "sa_nonfinite": float(flat.numel() - finite.numel()),
    }
    if finite.numel():
        qs = torch.quantile(finite, torch.tensor(quantiles, dtype=torch.float64)).tolist()
        hist = (torch.histc(finite.clamp(-1.0, 1.0), bins=hist_bins, min=-1.0, max=1.0) / finite.numel()).tolist()
    else:
        qs, hist = [math.nan] * len(quantiles), [math.nan] * hist_bins
    out.update({quantile_name(q): v for q, v in zip(quantiles, qs, strict=True)})
    out.update({f"sa_hist_{i:02d}": v for i, v in enumerate(hist)})
    return out


def _same(a: float, b: float, abs_tol: float = 0.0) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b or abs(a - b) <= abs_tol


special = st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-3, -1e-3, 5e-4, 0.2, -0.6, 0.6, 0.8, -0.2, 1.0000001,
                           math.nan, math.inf, -math.inf])
values = st.lists(st.one_of(st.floats(-1.0, 1.0), special), max_size=60)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(values, min_size=1, max_size=5), bins=st.integers(1, 12),
       quantiles=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5, unique=True),
       eps=st.sampled_from([0.0, 1e-3, 0.1]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_summary_table_equals_the_one_layer_reference(rows, bins, quantiles, eps, dtype):
    sas = [torch.tensor(r, dtype=dtype) for r in rows]
    quantiles = tuple(quantiles)
    table = sa_summary_table(sas, eps=eps, quantiles=quantiles, hist_bins=bins)
    names = summary_names(quantiles, bins)
    assert table.shape == (len(sas), len(names)) and table.dtype == torch.float64
    for sa, row in zip(sas, table.tolist(), strict=True):
        ref = _reference_summary(sa, eps=eps, quantiles=quantiles, hist_bins=bins)
        got = dict(zip(names, row, strict=True))
        assert got.keys() == ref.keys()
        for name, value in ref.items():
            # the mean of |SA| is summed over a padded row, so its rounding may differ in the last bits
            assert _same(got[name], value, 1e-12 if name == "sa_abs_mean" else 0.0), (name, got[name], value)
        assert sa_summary(sa, eps=eps, quantiles=quantiles, hist_bins=bins) == pytest.approx(got, nan_ok=True)


def test_summary_table_of_nothing_and_of_empty_rows():
    assert sa_summary_table([]).shape == (0, len(summary_names()))
    (row,) = sa_summary_table([torch.tensor([])]).tolist()
    got = dict(zip(summary_names(), row, strict=True))
    assert got["sa_count"] == 0 and got["sa_nonfinite"] == 0
    assert all(math.isnan(got[k]) for k in got if k not in ("sa_count", "sa_nonfinite"))
