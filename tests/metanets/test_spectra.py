"""Tests for the ``weight_spectra`` analysis: agreement with WeightWatcher 0.7.7, invariances, bounds and edge cases."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metanets.powerlaw import fit_power_law
from metanets.spectra import ANALYSIS_VERSION, SUMMARY_KEYS, summary, weight_spectra

SCALAR_KEYS = (
    "spectral_norm",
    "frobenius_norm",
    "stable_rank",
    "effective_rank",
    "lambda_max",
    "log_norm",
    "log_spectral_norm",
    "alpha",
    "alpha_weighted",
    "xmin",
    "xmax",
    "ks_distance",
    "alpha_sigma",
)
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A rows x cols matrix with orthonormal columns (rows >= cols), from QR of a Gaussian matrix."""
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


def planted(rows: int, cols: int, evals: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A rows x cols matrix whose eigenvalues sigma**2 are exactly ``evals`` (min(rows, cols) of them)."""
    k = min(rows, cols)
    u, v = _orthonormal(rows, k, gen), _orthonormal(cols, k, gen)
    return (u * evals.sqrt()) @ v.T


def pareto(n: int, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """n samples of the continuous power law p(x) ~ x^-alpha on [1, inf), by inverse-CDF sampling."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return u ** (-1.0 / (alpha - 1.0))


def student_t(rows: int, cols: int, gen: torch.Generator, dof: int = 3) -> torch.Tensor:
    """Heavy-tailed i.i.d. Student-t entries: a normal over the root of a chi-square / dof."""
    z = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    chi2 = torch.randn(dof, rows, cols, generator=gen, dtype=torch.float64).pow(2).sum(0)
    return z / (chi2 / dof).sqrt()


@st.composite
def matrices(draw, min_side: int = 2, max_side: int = 40) -> torch.Tensor:
    """Float64 matrices of several spectral families: Gaussian, heavy-tailed, low-rank, planted power law."""
    rows = draw(st.integers(min_side, max_side))
    cols = draw(st.integers(min_side, max_side))
    kind = draw(st.sampled_from(["gaussian", "student_t", "low_rank", "planted"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    if kind == "gaussian":
        return torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    if kind == "student_t":
        return student_t(rows, cols, gen)
    if kind == "low_rank":
        rank = draw(st.integers(1, min(rows, cols)))
        left = torch.randn(rows, rank, generator=gen, dtype=torch.float64)
        return left @ torch.randn(rank, cols, generator=gen, dtype=torch.float64)
    alpha = draw(st.floats(1.5, 6.0))
    return planted(rows, cols, pareto(min(rows, cols), alpha, gen), gen)


def analyse(matrix: torch.Tensor, **kwargs) -> dict:
    """The single record of one matrix."""
    (record,) = weight_spectra([("w", matrix)], **kwargs)
    return record


def assert_same_metrics(a: dict, b: dict, rel: float = 1e-6) -> None:
    """Every metric of two records agrees (None where the other is None)."""
    for key in SCALAR_KEYS:
        if a[key] is None or b[key] is None:
            assert a[key] is None and b[key] is None, key
        else:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-12), key
    for key in ("num_pl_spikes", "warning", "skipped", "fit_skipped"):
        assert a[key] == b[key], key
    np.testing.assert_allclose(a["singular_values"], b["singular_values"], rtol=1e-9, atol=1e-12 * a["spectral_norm"])


# --- agreement with WeightWatcher ------------------------------------------------------------------------------------


def test_alpha_and_norm_metrics_match_weightwatcher():
    """Same dense matrices through WW 0.7.7 (fit='PL', no pooling/randomisation/MP fit) and through weight_spectra.

    Tolerance rel 1e-6: both compute float64 singular values of the same float32 weights (WW with SciPy, we with
    torch), which agree to ~1e-13; the fit is the same deterministic function of them, so alpha differs only by
    round-off unless two x_min candidates have KS distances within round-off, which these fixed seeds do not.
    All layers have >= 20 eigenvalues (WW's standard estimator) and all eigenvalues > 1e-5 (WW's absolute cut-off).
    """
    import weightwatcher as ww

    gen = torch.Generator().manual_seed(1234)
    weights = [
        planted(200, 150, pareto(150, 2.5, gen), gen),
        planted(120, 300, pareto(120, 3.5, gen), gen),
        planted(256, 256, pareto(256, 5.0, gen) * 0.01, gen),
        planted(100, 80, pareto(80, 1.7, gen), gen),
        torch.randn(200, 100, generator=gen, dtype=torch.float64),
        torch.randn(64, 300, generator=gen, dtype=torch.float64),
        student_t(180, 150, gen),
    ]
    model = torch.nn.Sequential(*[torch.nn.Linear(w.shape[1], w.shape[0]) for w in weights])
    with torch.no_grad():
        for layer, w in zip(model, weights, strict=True):
            layer.weight.copy_(w)

    details = ww.WeightWatcher(model=model).analyze(
        randomize=False, mp_fit=False, fit="PL", pool=False, plot=False, min_evals=10
    )
    ours = {r["name"]: r for r in weight_spectra(model.named_parameters())}
    assert len(details) == len(weights)
    for _, row in details.iterrows():
        record = ours[f"{row['longname']}.weight"]
        assert record["alpha"] == pytest.approx(row["alpha"], rel=1e-6)
        assert record["xmin"] == pytest.approx(row["xmin"], rel=1e-6)
        assert record["xmax"] == pytest.approx(row["xmax"], rel=1e-6)
        assert record["ks_distance"] == pytest.approx(row["D"], rel=1e-6)
        assert record["alpha_sigma"] == pytest.approx(row["sigma"], rel=1e-6)
        assert record["num_pl_spikes"] == row["num_pl_spikes"]
        assert record["alpha_weighted"] == pytest.approx(row["alpha_weighted"], rel=1e-6)
        assert record["lambda_max"] == pytest.approx(row["lambda_max"], rel=1e-9)
        assert record["log_norm"] == pytest.approx(row["log_norm"], rel=1e-9)
        assert record["log_spectral_norm"] == pytest.approx(row["log_spectral_norm"], rel=1e-9)
        assert record["stable_rank"] == pytest.approx(row["stable_rank"], rel=1e-9)
        assert (record["warning"] or "") == row["warning"]
    assert {r["warning"] for r in ours.values()} >= {"over-trained", None}


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # WW's own loop on a flat tied tail
@given(
    n=st.integers(20, 400),
    alpha=st.floats(1.2, 8.0),
    seed=st.integers(0, 2**32 - 1),
    ties=st.booleans(),
)
@FAST
def test_vectorised_scan_equals_weightwatcher_loop(n, alpha, seed, ties):
    """The blockwise KS scan picks the same x_min candidate (index-based, repeated values included) as WW's loop."""
    from weightwatcher.WW_powerlaw import WWFit

    gen = torch.Generator().manual_seed(seed)
    evals = pareto(n, alpha, gen)
    if ties:
        evals = torch.round(evals * 4) / 4  # repeated values are separate candidates in WW
    if torch.unique(evals).numel() < 2:
        return
    ours, theirs = fit_power_law(evals), WWFit(evals.numpy())
    assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-9)
    assert ours.xmin == theirs.xmin
    assert ours.ks_distance == pytest.approx(theirs.D, rel=1e-9, abs=1e-12)
    assert ours.sigma == pytest.approx(theirs.sigma, rel=1e-9)
    assert ours.num_tail == round(((theirs.alpha - 1) / theirs.sigma) ** 2)  # WW's index-based n


# --- invariances ---------------------------------------------------------------------------------------------------


@given(matrix=matrices(min_side=12), scale=st.floats(1e-3, 1e3))
@FAST
def test_scaling_keeps_alpha_and_shifts_log_spectral_norm(matrix, scale):
    """lambda scales by c**2: alpha, ranks and KS distance stay, log10 norms shift by 2 log10(c)."""
    base, scaled = analyse(matrix), analyse(matrix * scale)
    shift = 2 * math.log10(scale)
    assert scaled["log_spectral_norm"] == pytest.approx(base["log_spectral_norm"] + shift, abs=1e-9)
    assert scaled["log_norm"] == pytest.approx(base["log_norm"] + shift, abs=1e-9)
    assert scaled["spectral_norm"] == pytest.approx(base["spectral_norm"] * scale, rel=1e-9)
    for key in ("stable_rank", "effective_rank", "alpha", "ks_distance", "alpha_sigma"):
        if base[key] is None:
            assert scaled[key] is None
        else:
            assert scaled[key] == pytest.approx(base[key], rel=1e-6), key
    if base["xmin"] is not None:
        assert scaled["xmin"] == pytest.approx(base["xmin"] * scale**2, rel=1e-6)
    assert scaled["num_pl_spikes"] == base["num_pl_spikes"]
    assert scaled["fit_skipped"] == base["fit_skipped"]


@given(matrix=matrices(), seed=st.integers(0, 2**32 - 1))
@FAST
def test_row_and_column_permutations_change_nothing(matrix, seed):
    """Permuting rows and columns is an orthogonal change of basis: same singular values, same metrics."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(matrix.shape[0], generator=gen)
    cols = torch.randperm(matrix.shape[1], generator=gen)
    assert_same_metrics(analyse(matrix), analyse(matrix[rows][:, cols]))


@given(matrix=matrices())
@FAST
def test_transposing_changes_nothing(matrix):
    """Metrics do not depend on the N >= M orientation."""
    assert_same_metrics(analyse(matrix), analyse(matrix.T.contiguous()))


# --- bounds and correctness of the spectrum ---------------------------------------------------------------------------


@given(matrix=matrices())
@FAST
def test_ranks_lie_between_one_and_rank(matrix):
    """1 <= stable_rank <= rank(W) and 1 <= effective_rank <= min(N, M) (up to round-off)."""
    record = analyse(matrix)
    rank = np.linalg.matrix_rank(matrix.numpy())
    assert 1 - 1e-9 <= record["stable_rank"] <= rank * (1 + 1e-9)
    assert 1 - 1e-9 <= record["effective_rank"] <= min(matrix.shape) * (1 + 1e-9)


@given(matrix=matrices())
@FAST
def test_singular_values_agree_with_numpy(matrix):
    """Singular values (descending) and the norms derived from them match numpy's SVD and norms."""
    record = analyse(matrix)
    expected = np.linalg.svd(matrix.numpy(), compute_uv=False)
    np.testing.assert_allclose(record["singular_values"], expected, rtol=1e-10, atol=1e-12 * expected[0])
    assert record["spectral_norm"] == pytest.approx(np.linalg.norm(matrix.numpy(), 2), rel=1e-10)
    assert record["frobenius_norm"] == pytest.approx(np.linalg.norm(matrix.numpy()), rel=1e-10)
    assert record["lambda_max"] == pytest.approx(expected[0] ** 2, rel=1e-10)
    assert record["stable_rank"] == pytest.approx(np.sum(expected**2) / expected[0] ** 2, rel=1e-10)
    p = expected[expected > 0] / expected.sum()
    assert record["effective_rank"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-10)


@given(alpha=st.floats(2.0, 5.0), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=15, deadline=None, derandomize=True)
def test_planted_power_law_exponent_is_recovered(alpha, seed):
    """320 x 300 matrix: 250 Pareto(alpha) eigenvalues on [1, inf) above a bulk of 50 uniform on [0.1, 0.9].

    Tolerance |alpha_hat - alpha| <= 5 sigma_alpha, sigma_alpha = (alpha_hat - 1)/sqrt(n_tail) being the MLE's standard
    error. Choosing x_min by KS widens the spread a little: over 600 seeds the standardised error stayed within +-3.8,
    so 5 sigma keeps false failures negligible, while fitting the whole spectrum (no x_min search) is off by >= 30 sigma.
    """
    gen = torch.Generator().manual_seed(seed)
    bulk = 0.1 + 0.8 * torch.rand(50, generator=gen, dtype=torch.float64)
    record = analyse(planted(320, 300, torch.cat([pareto(250, alpha, gen), bulk]), gen))
    assert abs(record["alpha"] - alpha) <= 5 * record["alpha_sigma"]
    assert record["alpha_sigma"] == pytest.approx((record["alpha"] - 1) / math.sqrt(record["num_pl_spikes"]))


def test_warning_labels_follow_alpha_thresholds():
    """Planted exponents far below 2 and far above 6 get WW's over-/under-trained labels; alpha ~ 3.5 gets none."""
    gen = torch.Generator().manual_seed(7)
    records = weight_spectra(
        (str(a), planted(270, 250, pareto(250, a, gen), gen)) for a in (1.4, 3.5, 12.0)
    )
    assert [r["warning"] for r in records] == ["over-trained", None, "under-trained"]
    assert records[0]["alpha"] < 2 < records[1]["alpha"] < 6 < records[2]["alpha"]
    for r in records:
        assert r["alpha_weighted"] == pytest.approx(r["alpha"] * r["log_spectral_norm"])


# --- layer handling and edge cases ------------------------------------------------------------------------------------


def test_conv_kernels_are_reshaped_to_out_by_in_times_kernel():
    """A (out, in, kh, kw) kernel is analysed as the (out, in*kh*kw) matrix, not as pooled k x k slices."""
    kernel = torch.randn(16, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    conv, flat = weight_spectra([("conv", kernel), ("flat", kernel.reshape(16, 36))])
    assert conv["shape"] == [16, 4, 3, 3]
    assert conv["matrix_shape"] == [16, 36]
    assert_same_metrics(conv, flat, rel=1e-12)
    assert len(conv["singular_values"]) == 16  # pooling the nine 16 x 4 slices would give 36


def test_one_dimensional_and_non_float_tensors_are_ignored():
    """Biases, norm scales and integer buffers produce no record; matrices keep input order."""
    records = weight_spectra(
        [
            ("a.weight", torch.randn(30, 20)),
            ("a.bias", torch.randn(30)),
            ("steps", torch.ones(30, 20, dtype=torch.int64)),
            ("b.weight", torch.randn(20, 30, dtype=torch.bfloat16)),
        ]
    )
    assert [r["name"] for r in records] == ["a.weight", "b.weight"]
    assert all(r["alpha"] is not None for r in records)


def test_fit_is_skipped_below_min_evals():
    """Fewer non-zero eigenvalues than min_evals: norms are reported, alpha fields are None with a reason."""
    gen = torch.Generator().manual_seed(3)
    narrow = torch.randn(50, 9, generator=gen)
    low_rank = torch.randn(40, 5, generator=gen) @ torch.randn(5, 40, generator=gen)
    skipped, rank_deficient = weight_spectra([("narrow", narrow), ("low_rank", low_rank)], min_evals=10)
    for record, count in ((skipped, 9), (rank_deficient, 5)):
        assert record["fit_skipped"] == f"{count} non-zero eigenvalues < min_evals=10"
        assert record["stable_rank"] is not None
        assert all(record[k] is None for k in ("alpha", "alpha_weighted", "xmin", "ks_distance", "num_pl_spikes"))
    assert analyse(narrow, min_evals=9)["alpha"] is not None
    with pytest.raises(ValueError):
        weight_spectra([("narrow", narrow)], min_evals=1)


@pytest.mark.parametrize(
    ("matrix", "reason"),
    [
        (torch.zeros(20, 10), "all-zero matrix"),
        (torch.full((20, 10), float("nan")), "matrix contains NaN or Inf"),
        (torch.eye(20).index_fill(0, torch.tensor([3]), float("inf")), "matrix contains NaN or Inf"),
        (torch.zeros(0, 10), "empty matrix"),
    ],
)
def test_unusable_matrices_are_skipped_with_a_reason(matrix, reason):
    """Degenerate inputs yield a record with ``skipped`` set and no metrics, and do not stop the other layers."""
    bad, good = weight_spectra([("bad", matrix), ("good", torch.randn(20, 10))])
    assert bad["skipped"] == reason
    assert all(bad[key] is None for key in SCALAR_KEYS + ("singular_values",))
    assert good["skipped"] is None and good["alpha"] is not None


def test_flat_spectrum_skips_the_fit():
    """An orthogonal-like matrix with identical singular values has no power-law tail to fit."""
    record = analyse(torch.eye(30))
    assert record["fit_skipped"].startswith("degenerate spectrum")
    assert record["alpha"] is None and record["stable_rank"] == pytest.approx(30.0)


def test_records_are_strict_json_and_progress_reaches_one():
    """Output survives json.dumps(allow_nan=False); progress is called once per input tensor, ending at 1.0."""
    gen = torch.Generator().manual_seed(5)
    tensors = [("w1", torch.randn(40, 30, generator=gen)), ("b1", torch.randn(40)), ("w2", torch.zeros(3, 3))]
    seen: list[float] = []
    records = weight_spectra((pair for pair in tensors), progress=seen.append)
    json.dumps(records, allow_nan=False)
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert len(records) == 2


def test_summary_averages_the_layers_that_have_each_metric():
    """Means skip layers without the metric (skipped fit or skipped matrix), like WW's pandas means."""
    gen = torch.Generator().manual_seed(11)
    records = weight_spectra(
        [
            ("a", torch.randn(60, 40, generator=gen)),
            ("b", student_t(50, 45, gen)),
            ("c", torch.randn(30, 4, generator=gen)),
            ("d", torch.zeros(5, 5)),
        ]
    )
    result = summary(records)
    assert result["num_layers"] == 4 and result["num_fitted"] == 2
    for key in SUMMARY_KEYS:
        values = [r[key] for r in records if r[key] is not None]
        assert result[key] == pytest.approx(sum(values) / len(values))
    assert result["alpha"] == pytest.approx((records[0]["alpha"] + records[1]["alpha"]) / 2)
    assert result["stable_rank"] == pytest.approx(sum(r["stable_rank"] for r in records[:3]) / 3)
    assert summary([])["alpha"] is None
    assert isinstance(ANALYSIS_VERSION, str) and ANALYSIS_VERSION
