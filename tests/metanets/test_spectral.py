"""Property tests of the SA math (analyses.md B.3 tests 1-6) in weightscope.spectral."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightscope.spectral import alignment, quantile_name, sa_summary, sign_diversity, top_singular

seeds = st.integers(min_value=0, max_value=2**31 - 1)
dims = st.integers(min_value=2, max_value=24)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gapped_matrix(seed: int, m: int, n: int) -> torch.Tensor:
    """Random matrix with a clear top singular gap (sigma1 >= 2 sigma2), so power iteration converges."""
    g = _gen(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    k = min(m, n)
    s = torch.sort(torch.rand(k, generator=g, dtype=torch.float64), descending=True).values
    s[0] = 2.0 + 3 * float(s[0])
    return (u[:, :k] * s) @ v[:, :k].T


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims)
def test_gaussian_inputs_have_high_diversity(seed, d):
    g = _gen(seed)
    w = torch.randn(d + 3, d, generator=g, dtype=torch.float64)
    v = top_singular(w, generator=g).v
    x = torch.randn(4000, d, generator=g, dtype=torch.float64)
    sa = alignment(x, v)
    assert sign_diversity(sa) > 0.9
    assert abs(float(sa.mean())) < 0.05


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, c=st.floats(0.1, 100.0), sign=st.sampled_from([1.0, -1.0]))
def test_inputs_along_singular_vector_collapse(seed, d, c, sign):
    g = _gen(seed)
    w = _gapped_matrix(seed, d + 2, d)
    v = top_singular(w, generator=g).v
    x = sign * c * v + 0.01 * c * torch.randn(500, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    sa = alignment(x, v)
    assert sign_diversity(sa) == 0.0
    assert float(sa.abs().min()) > 0.95


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, shift=st.floats(-1.0, 1.0))
def test_flipping_singular_vector_or_weight_changes_nothing(seed, d, shift):
    g = _gen(seed)
    w = _gapped_matrix(seed, d, d)
    v = top_singular(w, generator=g).v
    x = torch.randn(300, d, generator=g, dtype=torch.float64) + shift * v  # skewed, so SD is not trivially 1
    stats = sa_summary(alignment(x, v))
    flipped = sa_summary(alignment(x, -v))
    assert stats["sa_sign_diversity"] == flipped["sa_sign_diversity"]
    assert stats["sa_abs_mean"] == flipped["sa_abs_mean"]
    assert math.isclose(stats["sa_pos_frac"], 1 - flipped["sa_pos_frac"], abs_tol=1e-12)
    v_neg = top_singular(-w, generator=_gen(seed)).v  # -W has the same singular vectors up to sign
    assert sign_diversity(alignment(x, v_neg)) == sign_diversity(alignment(x, v))


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=dims, a=st.floats(1e-3, 1e3), b=st.floats(1e-3, 1e3))
def test_positive_scaling_changes_nothing(seed, d, a, b):
    w = _gapped_matrix(seed, d + 1, d)
    x = torch.randn(300, d, generator=_gen(seed + 1), dtype=torch.float64) + 0.5
    v = top_singular(w, generator=_gen(seed)).v
    v_scaled = top_singular(b * w, generator=_gen(seed)).v
    assert torch.allclose(v, v_scaled, atol=1e-6)
    sa = alignment(x, v)
    sa_scaled = alignment(a * x, v_scaled)
    assert torch.allclose(sa, sa_scaled, atol=1e-6)
    assert sign_diversity(sa) == sign_diversity(sa_scaled)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, m=dims, n=dims)
def test_power_iteration_agrees_with_svd(seed, m, n):
    w = _gapped_matrix(seed, m, n)
    top = top_singular(w, generator=_gen(seed), max_iters=500, tol=1e-12)
    _, s, vh = torch.linalg.svd(w)
    assert math.isclose(top.sigma, float(s[0]), rel_tol=1e-9)
    assert float(torch.abs(torch.dot(top.v, vh[0]))) > 1 - 1e-9
    assert torch.allclose(w @ top.v, top.sigma * top.u, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=dims)
def test_warm_start_converges_fast_and_keeps_sign(seed, d):
    w = _gapped_matrix(seed, d + 2, d)
    cold = top_singular(w, generator=_gen(seed), max_iters=500, tol=1e-10)
    prev = -cold.v  # whatever sign the previous step had, the new vector must follow it
    nudged = w + 1e-4 * torch.randn(w.shape, generator=_gen(seed + 7), dtype=torch.float64)
    warm = top_singular(nudged, prev, max_iters=500, tol=1e-6)
    assert warm.iterations <= 3
    assert float(torch.dot(warm.v, prev)) > 0.999


def test_rank_one_gives_exact_vector():
    g = _gen(3)
    u = torch.nn.functional.normalize(torch.randn(7, generator=g, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(5, generator=g, dtype=torch.float64), dim=0)
    top = top_singular(3.0 * torch.outer(u, v), generator=g)
    assert math.isclose(top.sigma, 3.0, rel_tol=1e-12)
    assert float(torch.abs(torch.dot(top.v, v))) > 1 - 1e-12


def test_summary_histogram_quantiles_and_near_zero_values():
    sa = torch.tensor([-0.9, -0.5, 0.0, 0.0005, 0.2, 0.6, 0.95, float("nan")], dtype=torch.float64)
    out = sa_summary(sa, eps=1e-3, quantiles=(0.5,), hist_bins=4)
    finite = sa[torch.isfinite(sa)]
    assert out["sa_count"] == 5  # 0.0 and 0.0005 are below eps and ignored for the sign
    assert out["sa_pos_frac"] == 3 / 5
    assert math.isclose(out["sa_sign_diversity"], 2 * 2 / 5)
    assert out["sa_nonfinite"] == 1
    assert out["sa_q50"] == float(torch.quantile(finite, 0.5))
    hist = [out[f"sa_hist_{i:02d}"] for i in range(4)]
    assert hist == [1 / 7, 1 / 7, 3 / 7, 2 / 7]  # bins [-1,-.5) [-.5,0) [0,.5) [.5,1]
    assert math.isnan(sa_summary(torch.zeros(3))["sa_sign_diversity"])
    assert quantile_name(0.05) == "sa_q05" and quantile_name(0.995) == "sa_q99.5"
