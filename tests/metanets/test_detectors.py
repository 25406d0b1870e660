"""Detector unit tests on synthetic telemetry series (metanets.detectors)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metanets.detectors import (
    DetectorSet,
    GradNormSpikeDetector,
    LossSpikeDetector,
    SACollapseConfig,
    SACollapseDetector,
    WeightNormGrowthConfig,
    WeightNormGrowthDetector,
)


def sd_records(steps, sd_of):
    """SA records for layers l0..l3 with sign diversity sd_of(step, layer_index)."""
    return [{"step": s, "layer": f"l{i}", "metrics": {"sa_sign_diversity": sd_of(s, i)}}
            for s in steps for i in range(4)]


def loss_records(values, metric="loss"):
    return [{"step": s, "layer": "_step", "metrics": {metric: v}} for s, v in values]


# the rule as first written (3 in a row, baseline from the first 5 measurements): the step arithmetic below is easy
EARLY = dict(consecutive=3, baseline_skip=0, median_threshold=0.3, min_baseline=0.5)


def healthy_then_collapse(s, i, at=100):
    if i == 3:
        return 0.05  # a LayerNorm-fed layer that sits collapsed from the start (sa-probe.md)
    return 0.9 if s < at else 0.02


def test_sa_collapse_fires_once_after_k_consecutive():
    det = SACollapseDetector(SACollapseConfig(**EARLY))
    warnings = det.ingest(sd_records(range(0, 200, 5), healthy_then_collapse))
    assert len(warnings) == 1
    w = warnings[0]
    assert w.step == 110  # collapse from 100, third consecutive measurement at 110
    assert w.detector == "sa_collapse" and w.severity == "warning"
    assert w.layers == ["l0", "l1", "l2"]  # l3 was never eligible: its early baseline was already collapsed
    assert w.values["median_sd"] == pytest.approx(0.02)
    assert det.ingest(sd_records(range(200, 260, 5), healthy_then_collapse)) == []  # same episode, no repeat


def test_sa_collapse_ignores_layers_collapsed_from_the_start_and_short_dips():
    det = SACollapseDetector()
    dips = {50, 55, 120, 125}  # two measurements below threshold twice: fewer than K=3
    assert det.ingest(sd_records(range(0, 200, 5), lambda s, i: 0.0 if i == 3 else (0.02 if s in dips else 0.9))) == []
    raw_rule = SACollapseDetector(SACollapseConfig(min_baseline=0.0, aggregate="fraction", fraction_threshold=0.25))
    fired = raw_rule.ingest(sd_records(range(0, 100, 5), lambda s, i: 0.0 if i == 3 else 0.9))
    assert [w.layers for w in fired] == [["l3"]]  # the bare per-layer rule false-alarms on that layer


def test_sa_collapse_new_episode_after_recovery():
    det = SACollapseDetector(SACollapseConfig(**EARLY))
    sd = lambda s, i: 0.02 if (100 <= s < 130 or 200 <= s < 230) else 0.9  # noqa: E731
    warnings = det.ingest(sd_records(range(0, 300, 5), sd))
    assert [w.step for w in warnings] == [110, 210]


def test_out_of_order_and_batched_arrival_gives_one_warning_per_episode():
    records = sd_records(range(0, 300, 5), healthy_then_collapse)
    records += loss_records([(s, 6.0 if 200 <= s <= 210 else 2.0 + 0.01 * (s % 7)) for s in range(0, 300, 5)])
    rng = random.Random(0)
    rng.shuffle(records)
    dets = DetectorSet.from_spec(["sa_collapse", "loss_spike"])
    warnings = [w for i in range(0, len(records), 23) for w in dets.ingest(records[i:i + 23])]
    assert sorted(w.detector for w in warnings) == ["loss_spike", "sa_collapse"]
    assert len({w.id for w in warnings}) == len(warnings)


def test_late_record_inside_an_episode_does_not_warn_again():
    det = LossSpikeDetector()
    base = [(s, 2.0 + 0.01 * (s % 3)) for s in range(0, 100)]
    assert det.ingest(loss_records(base)) == []
    (first,) = det.ingest(loss_records([(102, 9.0), (104, 9.0)]))
    assert first.step == 102
    assert det.ingest(loss_records([(101, 9.0), (103, 9.0)])) == []  # the same spike, filled in late


def test_loss_spike_robust_z_and_nan_is_critical():
    rng = random.Random(1)
    series = [(s, 3.0 - s / 500 + rng.gauss(0, 0.02)) for s in range(300)]
    series[150] = (150, 8.0)
    series[250] = (250, float("nan"))
    warnings = LossSpikeDetector().ingest(loss_records(series))
    assert [(w.step, w.severity) for w in warnings] == [(150, "warning"), (250, "critical")]
    assert warnings[0].values["z"] > 6
    assert warnings[1].to_dict()["values"]["loss"] == "NaN"  # JSON-safe


def test_noisy_loss_without_spike_is_quiet():
    rng = random.Random(2)
    series = [(s, 3.0 - s / 500 + rng.gauss(0, 0.05)) for s in range(1000)]
    assert LossSpikeDetector().ingest(loss_records(series)) == []


def test_grad_norm_spike_on_log_scale_and_inf():
    rng = random.Random(3)
    series = [(s, rng.lognormvariate(0.0, 0.3)) for s in range(200)]
    series[120] = (120, 200.0)
    series[180] = (180, float("inf"))
    warnings = GradNormSpikeDetector().ingest(loss_records(series, "grad_norm"))
    assert [(w.step, w.severity) for w in warnings] == [(120, "warning"), (180, "critical")]


def test_weight_norm_growth():
    cfg = WeightNormGrowthConfig(window=10, ratio_threshold=1.5)
    grow = lambda s, name: 1.1 ** max(0, s - 50) if name == "a" else 1.0  # noqa: E731
    records = [{"step": s, "layer": name, "metrics": {"weight_norm": 10.0 * grow(s, name)}}
               for s in range(100) for name in ("a", "b")]
    (w,) = WeightNormGrowthDetector(cfg).ingest(records)
    assert w.layers == ["a"]
    assert w.step == 55  # 1.1**5 = 1.61 over the last 10 measurements
    assert w.values["max_ratio"] == pytest.approx(1.1 ** 5)


def test_state_round_trips_through_json():
    records = sd_records(range(0, 150, 5), healthy_then_collapse)
    records += loss_records([(s, 2.0 if s != 145 else float("nan")) for s in range(0, 150, 5)])
    dets = DetectorSet.from_spec({"sa_collapse": {"consecutive": 2}, "loss_spike": {"window": 20}})
    first = dets.ingest(records)
    assert {w.detector for w in first} == {"sa_collapse", "loss_spike"}
    state = json.loads(json.dumps(dets.to_dict(), allow_nan=False))
    restored = DetectorSet.from_dict(state)
    assert restored.detectors[0].config.consecutive == 2
    assert restored.ingest(records) == []  # emitted episodes survive the round trip
    more = sd_records(range(150, 200, 5), lambda s, i: 0.9)
    more += sd_records(range(200, 230, 5), lambda s, i: 0.01)
    (again,) = restored.ingest(more)
    assert again.step == 205  # a new episode after recovery, K=2


def test_unknown_detector_or_config_field_is_rejected():
    with pytest.raises(ValueError):
        DetectorSet.from_spec(["nope"])
    with pytest.raises(ValueError):
        DetectorSet.from_spec({"loss_spike": {"treshold": 3}})


def test_string_encoded_non_finite_values_are_signals():
    (w,) = LossSpikeDetector().ingest(loss_records([(0, 1.0), (1, "Infinity")]))
    assert w.severity == "critical" and w.step == 1


def spiky_run(seed: int, steps: int) -> list[dict]:
    """A long run: noisy loss and grad norm with a few spikes, SD per layer with a collapse episode or two."""
    rng = random.Random(seed)
    spikes = set(rng.sample(range(100, steps), 6))
    collapse = {s for start in rng.sample(range(200, steps - 50), 2) for s in range(start, start + 40)}
    records = loss_records([(s, (9.0 if s in spikes else 2.0) + rng.gauss(0, 0.02)) for s in range(steps)])
    records += loss_records([(s, rng.lognormvariate(0, 0.2) * (50 if s in spikes else 1)) for s in range(steps)],
                            "grad_norm")
    records += sd_records(range(0, steps, 5), lambda s, i: 0.02 if s in collapse else 0.8 + 0.1 * rng.random())
    records += [{"step": s, "layer": f"l{i}", "metrics": {"weight_norm": 10.0 * (3.0 if s in collapse else 1.0)}}
                for s in range(0, steps, 5) for i in range(2)]
    return records


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(50, 400))
def test_bounded_history_warns_like_unbounded_on_in_order_data(seed, batch):
    records = spiky_run(seed, 800)
    records.sort(key=lambda r: r["step"])
    capped, full = DetectorSet.from_spec(None), DetectorSet.from_spec(None)
    for det in capped.detectors:
        det.history = 120  # far longer than every window, far shorter than the run
    got = [w for i in range(0, len(records), batch) for w in capped.ingest(records[i:i + batch])]
    want = [w for i in range(0, len(records), batch) for w in full.ingest(records[i:i + batch])]
    assert [w.id for w in got] == [w.id for w in want]
    assert got  # the run has episodes to find
    for det in capped.detectors:
        assert len(det._steps()) <= 120


def test_records_older_than_the_history_are_ignored_and_state_round_trips():
    det = SACollapseDetector(SACollapseConfig(**EARLY), history=50)
    det.ingest(sd_records(range(0, 1000, 5), lambda s, i: 0.9))
    assert min(det._steps()) == 750 and len(det._steps()) == 50
    assert det.ingest(sd_records(range(100, 130, 5), lambda s, i: 0.0)) == []  # before the horizon: ignored
    assert all(100 not in layer for layer in det.series.values())
    restored = SACollapseDetector.from_dict(json.loads(json.dumps(det.to_dict(), allow_nan=False)))
    assert restored.history == 50 and restored._baselines == det._baselines  # baselines outlive the series
    (w,) = restored.ingest(sd_records(range(1000, 1030, 5), lambda s, i: 0.01))
    assert w.step == 1010


def test_baseline_skip_ignores_early_training_collapse():
    # layers without normalisation collapse in the first measurements of every run, healthy or not (sa-probe.md);
    # skipping them makes those layers ineligible instead of judging everything after against a random-init baseline
    early_collapse = lambda s, i: 0.9 if s < 15 else (0.02 if s < 300 else 0.9)  # noqa: E731
    no_skip = SACollapseDetector(SACollapseConfig(**EARLY))
    assert no_skip.ingest(sd_records(range(0, 400, 5), early_collapse))  # fires at once
    skipping = SACollapseDetector(SACollapseConfig(**{**EARLY, "baseline_skip": 10}))
    assert skipping.ingest(sd_records(range(0, 400, 5), early_collapse)) == []
    (w,) = SACollapseDetector().ingest(sd_records(range(0, 400, 5), healthy_then_collapse))  # defaults: skip 10, K 5
    assert w.step == 120 and w.layers == ["l0", "l1", "l2"]  # baselines from steps 50-70, collapse from 100
