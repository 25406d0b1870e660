"""Training-instability detectors over run telemetry (pure logic: no HTTP, no database).

Each detector ingests telemetry records ``{step, layer, metrics}`` (the schema of client/README.md), in any order and
in any batching, and returns the warnings that became due. A warning is emitted once per *episode*: a stretch of
firing measurements that ends after ``reset_after`` consecutive normal ones; a late record that extends, splits or
precedes an episode already warned about does not warn again. NaN and Inf values are signals (``critical``), not
errors. State is serialisable (``to_dict``/``from_dict``, JSON-safe) and is the stored series plus the emitted
episodes, so the server can persist it or rebuild it from its telemetry table. Memory is bounded: a detector keeps
the newest ``history`` measured steps (and the newest ``MAX_EPISODES`` episodes per severity); records older than
what it keeps are ignored, so a late record can only change judgments inside that horizon.

Detectors:
* ``sa_collapse``: sign-diversity (SD) collapse of Spectral Alignment, aggregated over layers against each layer's
  early baseline (reference/sa-probe.md: single-layer thresholds false-alarm on LayerNorm-fed layers).
* ``grad_norm_spike``, ``loss_spike``: robust z-score (median/MAD) against a trailing window.
* ``weight_norm_growth``: a layer's weight norm grew by a factor over a trailing window of its measurements.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

STEP_LAYER = "_step"
HISTORY_STEPS = 2048  # measured steps a detector keeps; older steps are forgotten (windows are far shorter)
MAX_EPISODES = 256  # emitted episodes kept per severity, to recognise a late record's episode
Severity = Literal["warning", "critical"]


def decode_value(value: Any) -> float:
    """Metric value from the wire: numbers, or the strings "NaN", "Infinity", "-Infinity" (any case)."""
    return float(value)


def encode_value(value: float) -> float | str:
    """JSON-safe form of a float: non-finite values become "NaN", "Infinity" or "-Infinity"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


@dataclass(frozen=True)
class Record:
    """One telemetry record: per-layer metrics, or per-step scalars under layer ``_step``."""

    step: int
    layer: str
    metrics: Mapping[str, float]

    @classmethod
    def parse(cls, raw: Record | Mapping[str, Any]) -> Record:
        if isinstance(raw, Record):
            return raw
        return cls(int(raw["step"]), str(raw["layer"]),
                   {str(k): decode_value(v) for k, v in (raw.get("metrics") or {}).items() if v is not None})


@dataclass(frozen=True)
class DetectorWarning:
    """A warning: ``id`` is deterministic (detector, severity, firing step), so re-running detectors is idempotent."""

    id: str
    step: int
    layers: list[str]
    detector: str
    severity: Severity
    message: str
    values: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["values"] = {k: encode_value(v) for k, v in self.values.items()}
        return d


@dataclass(frozen=True)
class _Firing:
    """What a detector found at one step that fires."""

    severity: Severity
    layers: list[str]
    values: dict[str, float]
    message: str


# ``_evaluate`` returns a _Firing, NORMAL (judged, did not fire) or None (not enough data to judge: such steps
# neither continue nor end an episode, so partial or late data cannot split one)
NORMAL = "normal"


def _config_from(cls: type, data: Mapping[str, Any] | None) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys (a typo must not silently use a default)."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**data)


class _EpisodeDetector:
    """Shared episode logic. Subclasses keep a series, evaluate one step at a time, and say which steps changed."""

    name: ClassVar[str]
    config_cls: ClassVar[type]

    def __init__(self, config: Any = None, history: int = HISTORY_STEPS):
        self.config = config if config is not None else self.config_cls()
        self.history = max(history, 2 * self._context() + 1)
        self._horizon: float = -math.inf  # steps before it were forgotten; their records are ignored
        self._emitted: dict[str, list[list[int]]] = {"warning": [], "critical": []}  # [start, end] per severity
        self._cache: dict[int, _Firing | str | None] = {}

    # subclass interface
    def _absorb(self, records: list[Record]) -> float | None:
        """Store the records' values; return the smallest step whose evaluation may change (-inf: all), or None."""
        raise NotImplementedError

    def _steps(self) -> list[int]:
        raise NotImplementedError

    def _evaluate(self, step: int) -> _Firing | str | None:
        raise NotImplementedError

    def _consecutive(self, severity: Severity) -> int:
        return 1

    def _context(self) -> int:
        """Measurements before a step that judging it needs."""
        return 0

    def _forget(self, before: int) -> None:
        """Drop every stored measurement of a step before ``before``."""
        raise NotImplementedError

    def _series_dict(self) -> Any:
        raise NotImplementedError

    def _load_series(self, data: Any) -> None:
        raise NotImplementedError

    # public API
    def ingest(self, records: Iterable[Record | Mapping[str, Any]]) -> list[DetectorWarning]:
        """Absorb records (any order) and return the warnings of episodes not warned about before."""
        parsed = [r for r in map(Record.parse, records) if r.step >= self._horizon]
        changed = self._absorb(parsed)
        if changed is None:
            return []
        self._cache = {s: f for s, f in self._cache.items() if s < changed}
        steps = self._steps()
        for s in steps:
            if s not in self._cache:
                self._cache[s] = self._evaluate(s)
        warnings = []
        for severity in ("critical", "warning"):
            warnings.extend(self._scan(steps, severity))
        if len(steps) > self.history:
            self._trim(steps[-self.history:])
        return sorted(warnings, key=lambda w: (w.step, w.severity))

    def _trim(self, kept: list[int]) -> None:
        """Forget the steps before ``kept``; from now on ignore records before its ``_context()``-th step, so every
        step that a late record makes us judge again still has its whole trailing window."""
        self._forget(kept[0])
        self._cache = {s: f for s, f in self._cache.items() if s >= kept[0]}
        self._horizon = kept[self._context()]
        for severity, episodes in self._emitted.items():
            self._emitted[severity] = episodes[-MAX_EPISODES:]

    def _scan(self, steps: list[int], severity: Severity) -> list[DetectorWarning]:
        """Find the episodes of ``severity`` in the whole series; emit those that overlap no emitted episode.

        An episode spans from its first firing measurement to its last, so a late record that joins two pieces,
        or precedes an episode already warned about, merges into it instead of warning again.
        """
        need = self._consecutive(severity)
        episodes: list[tuple[list[int], int, _Firing]] = []  # ([start, end], firing step, firing)
        run_start = run_len = gap = 0
        active: list[int] | None = None
        for s in steps:
            firing = self._cache.get(s)
            if firing is None:
                continue
            hit = isinstance(firing, _Firing) and firing.severity == severity
            if active is not None:
                if hit:
                    active[1], gap = s, 0
                else:
                    gap += 1
                    if gap >= self.config.reset_after:
                        active, run_len = None, 0
                continue
            if not hit:
                run_len = 0
                continue
            run_len += 1
            if run_len == 1:
                run_start = s
            if run_len >= need:
                active, gap = [run_start, s], 0
                episodes.append((active, s, firing))
        out: list[DetectorWarning] = []
        for interval, step, firing in episodes:
            if self._merge(severity, interval):
                continue
            self._emitted[severity].append(list(interval))
            out.append(DetectorWarning(
                id=f"{self.name}:{severity}:{step}", step=step, layers=list(firing.layers), detector=self.name,
                severity=severity, message=firing.message, values=dict(firing.values)))
        return out

    def _merge(self, severity: Severity, episode: list[int]) -> bool:
        """Extend the emitted episodes that overlap ``episode``; False if none does (so it is new)."""
        found = False
        for interval in self._emitted[severity]:
            if episode[0] <= interval[1] and interval[0] <= episode[1]:
                interval[0], interval[1] = min(interval[0], episode[0]), max(interval[1], episode[1])
                found = True
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: config, stored series and emitted episodes (the evaluation cache is recomputed)."""
        return {"detector": self.name, "config": asdict(self.config), "series": self._series_dict(),
                "emitted": {k: [list(i) for i in v] for k, v in self._emitted.items()},
                "history": self.history, "horizon": encode_value(self._horizon)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _EpisodeDetector:
        det = cls(_config_from(cls.config_cls, data.get("config")), int(data.get("history", HISTORY_STEPS)))
        det._horizon = decode_value(data.get("horizon", "-Infinity"))
        det._load_series(data.get("series") or {})
        det._emitted = {k: [list(map(int, i)) for i in v] for k, v in (data.get("emitted") or {}).items()}
        det._emitted.setdefault("warning", [])
        det._emitted.setdefault("critical", [])
        return det


def _series_to_json(series: Mapping[int, float]) -> list[list[Any]]:
    return [[s, encode_value(v)] for s, v in sorted(series.items())]


def _series_from_json(pairs: Iterable[Iterable[Any]]) -> dict[int, float]:
    return {int(s): decode_value(v) for s, v in pairs}


# -- Spectral Alignment sign-diversity collapse ------------------------------------------------------------------------
@dataclass
class SACollapseConfig:
    """SA collapse rule. The paper's thresholds are unknown: these defaults were tuned on the CPU validity runs of
    ``bench/sa_tune.py`` (seed 0; BENCHMARKS.md has the held-out seeds), as were the other detectors' defaults.

    A layer is *eligible* once ``baseline_measurements`` values after its first ``baseline_skip`` exist and their
    median is at least ``min_baseline`` (layers that sat near SD 0 from the start, like LayerNorm-fed MLP up-projections, never are).
    At a step, eligible layers with SD below ``layer_threshold`` count as collapsed. The step fires when
    ``aggregate="median"`` and the median SD of eligible layers is below ``median_threshold``, or when
    ``aggregate="fraction"`` and the collapsed fraction is at least ``fraction_threshold``. A warning needs
    ``consecutive`` firing measurements in a row. Steps where fewer than ``min_layer_fraction`` of the eligible layers
    reported are skipped (a step's records may arrive in several batches).
    """

    metric: str = "sa_sign_diversity"
    layer_threshold: float = 0.1
    aggregate: Literal["median", "fraction"] = "median"
    median_threshold: float = 0.2
    fraction_threshold: float = 0.5
    consecutive: int = 5
    baseline_measurements: int = 5
    baseline_skip: int = 10
    min_baseline: float = 0.3
    min_layer_fraction: float = 0.5
    reset_after: int = 3


class SACollapseDetector(_EpisodeDetector):
    """Sign-diversity collapse over layers, each layer judged only after its own early baseline."""

    name = "sa_collapse"
    config_cls = SACollapseConfig

    def __init__(self, config: SACollapseConfig | None = None, history: int = HISTORY_STEPS):
        super().__init__(config, history)
        if self.config.aggregate not in ("median", "fraction"):
            raise ValueError("aggregate must be 'median' or 'fraction'")
        self.series: dict[str, dict[int, float]] = {}
        self._baselines: dict[str, tuple[int, float] | None] = {}  # layer -> (last baseline step, median)

    def _consecutive(self, severity: Severity) -> int:
        return self.config.consecutive

    def _absorb(self, records: list[Record]) -> float | None:
        changed: float | None = None
        for r in records:
            if r.layer == STEP_LAYER or self.config.metric not in r.metrics:
                continue
            layer = self.series.setdefault(r.layer, {})
            layer[r.step] = r.metrics[self.config.metric]
            base = self._baselines.get(r.layer)
            if base is None or r.step <= base[0]:  # the layer's baseline may change: every step may change
                self._baselines[r.layer] = self._baseline(layer)
                changed = -math.inf
            else:
                changed = r.step if changed is None else min(changed, r.step)
        return changed

    def _baseline(self, layer: Mapping[int, float]) -> tuple[int, float] | None:
        """(step of the last baseline measurement, median of the N finite values after the first ``baseline_skip``),
        or None while there are fewer."""
        finite = [(s, v) for s, v in sorted(layer.items()) if math.isfinite(v)]
        skip, n = self.config.baseline_skip, self.config.baseline_measurements
        if len(finite) < skip + n:
            return None
        return finite[skip + n - 1][0], statistics.median(v for _, v in finite[skip:skip + n])

    def _steps(self) -> list[int]:
        return sorted({s for layer in self.series.values() for s in layer})

    def _evaluate(self, step: int) -> _Firing | str | None:
        cfg = self.config
        eligible = {name: b for name, b in self._baselines.items() if b is not None and b[1] >= cfg.min_baseline}
        present = {name: self.series[name][step] for name, b in eligible.items()
                   if step > b[0] and step in self.series[name] and math.isfinite(self.series[name][step])}
        if not present or len(present) < cfg.min_layer_fraction * len(eligible):
            return None
        median_sd = statistics.median(present.values())
        collapsed = sorted(name for name, v in present.items() if v < cfg.layer_threshold)
        fraction = len(collapsed) / len(present)
        fires = median_sd < cfg.median_threshold if cfg.aggregate == "median" else fraction >= cfg.fraction_threshold
        if not fires:
            return NORMAL
        return _Firing(
            "warning", collapsed,
            {"median_sd": median_sd, "fraction_collapsed": fraction, "n_layers": float(len(present))},
            f"SA sign diversity collapsed: median {median_sd:.3f} over {len(present)} layers, "
            f"{len(collapsed)} below {cfg.layer_threshold} (for {cfg.consecutive} measurements)")

    def _forget(self, before: int) -> None:
        for layer in self.series.values():  # baselines stay: they are each layer's first measurements
            for step in [s for s in layer if s < before]:
                del layer[step]

    def _series_dict(self) -> Any:
        return {"layers": {layer: _series_to_json(s) for layer, s in self.series.items()},
                "baselines": {layer: list(b) if b else None for layer, b in self._baselines.items()}}

    def _load_series(self, data: Any) -> None:
        self.series = {layer: _series_from_json(pairs) for layer, pairs in (data.get("layers") or {}).items()}
        self._baselines = {layer: (int(b[0]), float(b[1])) if b else None
                           for layer, b in (data.get("baselines") or {}).items()}


# -- robust spikes of a per-step scalar --------------------------------------------------------------------------------
@dataclass
class SpikeConfig:
    """Robust z-score spike rule: z = (x - median) / (1.4826 MAD) over the previous ``window`` finite measurements
    (at least ``min_history``), on log(x) if ``log``. Fires when z > ``z_threshold``; the scale is floored at
    ``rel_floor`` times |median| so a flat series does not make every wiggle a spike. Non-finite x is critical."""

    metric: str = "loss"
    layer: str = STEP_LAYER
    window: int = 100
    min_history: int = 10
    z_threshold: float = 6.0
    log: bool = False
    rel_floor: float = 0.01
    reset_after: int = 3


class RobustSpikeDetector(_EpisodeDetector):
    """Spike of one scalar series against its own trailing window."""

    name = "spike"
    config_cls = SpikeConfig

    def __init__(self, config: SpikeConfig | None = None, history: int = HISTORY_STEPS):
        super().__init__(config, history)
        self.series: dict[int, float] = {}
        self._order: list[int] = []

    def _absorb(self, records: list[Record]) -> float | None:
        changed: float | None = None
        for r in records:
            if r.layer != self.config.layer or self.config.metric not in r.metrics:
                continue
            if r.step not in self.series:
                bisect.insort(self._order, r.step)
            self.series[r.step] = r.metrics[self.config.metric]
            changed = r.step if changed is None else min(changed, r.step)
        return changed

    def _steps(self) -> list[int]:
        return self._order

    def _context(self) -> int:
        return self.config.window

    def _transform(self, x: float) -> float | None:
        if not self.config.log:
            return x
        return math.log(x) if x > 0 else None

    def _evaluate(self, step: int) -> _Firing | str | None:
        cfg = self.config
        x = self.series[step]
        if not math.isfinite(x):
            return _Firing("critical", [], {cfg.metric: x}, f"{cfg.metric} is {x} at step {step}")
        tx = self._transform(x)
        if tx is None:
            return None
        idx = bisect.bisect_left(self._order, step)
        history: list[float] = []
        for j in range(idx - 1, -1, -1):
            v = self.series[self._order[j]]
            t = self._transform(v) if math.isfinite(v) else None
            if t is not None:
                history.append(t)
                if len(history) == cfg.window:
                    break
        if len(history) < cfg.min_history:
            return None
        med = statistics.median(history)
        mad = statistics.median(abs(h - med) for h in history)
        scale = max(1.4826 * mad, cfg.rel_floor * abs(med), 1e-12)
        z = (tx - med) / scale
        if z <= cfg.z_threshold:
            return NORMAL
        median_value = math.exp(med) if cfg.log else med
        return _Firing("warning", [], {cfg.metric: x, "median": median_value, "z": z},
                       f"{cfg.metric} spike at step {step}: {x:.4g} against trailing median {median_value:.4g} "
                       f"(robust z {z:.1f} > {cfg.z_threshold})")

    def _forget(self, before: int) -> None:
        cut = bisect.bisect_left(self._order, before)
        for step in self._order[:cut]:
            del self.series[step]
        del self._order[:cut]

    def _series_dict(self) -> Any:
        return _series_to_json(self.series)

    def _load_series(self, data: Any) -> None:
        self.series = _series_from_json(data)
        self._order = sorted(self.series)


@dataclass
class LossSpikeConfig(SpikeConfig):
    """Loss spike: raw loss values."""

    z_threshold: float = 4.0


@dataclass
class GradNormSpikeConfig(SpikeConfig):
    """Gradient-norm spike: on log scale, since gradient norms are heavy-tailed and positive."""

    metric: str = "grad_norm"
    log: bool = True
    z_threshold: float = 8.0


class LossSpikeDetector(RobustSpikeDetector):
    name = "loss_spike"
    config_cls = LossSpikeConfig


class GradNormSpikeDetector(RobustSpikeDetector):
    name = "grad_norm_spike"
    config_cls = GradNormSpikeConfig


# -- weight-norm growth ------------------------------------------------------------------------------------------------
@dataclass
class WeightNormGrowthConfig:
    """Fires when a layer's ``metric`` grew by at least ``ratio_threshold`` over its last ``window`` measurements
    (``metric="sigma1"`` watches the spectral norm instead). Non-finite values are critical."""

    metric: str = "weight_norm"
    window: int = 20
    ratio_threshold: float = 3.0
    reset_after: int = 3


class WeightNormGrowthDetector(_EpisodeDetector):
    """Per-layer weight-norm growth; one warning lists every layer that grew at the firing step."""

    name = "weight_norm_growth"
    config_cls = WeightNormGrowthConfig

    def __init__(self, config: WeightNormGrowthConfig | None = None, history: int = HISTORY_STEPS):
        super().__init__(config, history)
        self.series: dict[str, dict[int, float]] = {}
        self._orders: dict[str, list[int]] = {}

    def _absorb(self, records: list[Record]) -> float | None:
        changed: float | None = None
        for r in records:
            if r.layer == STEP_LAYER or self.config.metric not in r.metrics:
                continue
            layer = self.series.setdefault(r.layer, {})
            if r.step not in layer:
                bisect.insort(self._orders.setdefault(r.layer, []), r.step)
            layer[r.step] = r.metrics[self.config.metric]
            changed = r.step if changed is None else min(changed, r.step)
        return changed

    def _steps(self) -> list[int]:
        return sorted({s for order in self._orders.values() for s in order})

    def _context(self) -> int:
        return self.config.window

    def _evaluate(self, step: int) -> _Firing | str | None:
        cfg = self.config
        grown: dict[str, float] = {}
        bad: dict[str, float] = {}
        judged = False
        for name, layer in self.series.items():
            if step not in layer:
                continue
            x = layer[step]
            if not math.isfinite(x):
                bad[name] = x
                continue
            idx = bisect.bisect_left(self._orders[name], step)
            if idx < cfg.window:
                continue
            judged = True
            prev = layer[self._orders[name][idx - cfg.window]]
            if math.isfinite(prev) and prev > 0 and x / prev >= cfg.ratio_threshold:
                grown[name] = x / prev
        if bad:
            return _Firing("critical", sorted(bad), {f"{cfg.metric}:{k}": v for k, v in bad.items()},
                           f"{cfg.metric} is non-finite in {len(bad)} layers at step {step}")
        if not grown:
            return NORMAL if judged else None
        worst = max(grown, key=grown.get)
        return _Firing("warning", sorted(grown), {"max_ratio": grown[worst], "n_layers": float(len(grown))},
                       f"{cfg.metric} grew x{grown[worst]:.2f} in {cfg.window} measurements ({worst}); "
                       f"{len(grown)} layers above x{cfg.ratio_threshold}")

    def _forget(self, before: int) -> None:
        for name, order in self._orders.items():
            cut = bisect.bisect_left(order, before)
            for step in order[:cut]:
                del self.series[name][step]
            del order[:cut]

    def _series_dict(self) -> Any:
        return {layer: _series_to_json(s) for layer, s in self.series.items()}

    def _load_series(self, data: Any) -> None:
        self.series = {layer: _series_from_json(pairs) for layer, pairs in data.items()}
        self._orders = {layer: sorted(s) for layer, s in self.series.items()}


DETECTORS: dict[str, type[_EpisodeDetector]] = {
    cls.name: cls for cls in (SACollapseDetector, GradNormSpikeDetector, LossSpikeDetector, WeightNormGrowthDetector)
}


@dataclass
class DetectorSet:
    """The detectors of one run: feeds every record batch to each and collects their new warnings."""

    detectors: list[_EpisodeDetector] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Mapping[str, Any] | None] | Iterable[str] | None = None) -> DetectorSet:
        """``spec`` as sent in ``POST /v1/runs {detectors}``: name -> config overrides, a list of names, or None
        (all detectors with default configs)."""
        if spec is None:
            spec = {name: None for name in DETECTORS}
        elif not isinstance(spec, Mapping):
            spec = {name: None for name in spec}
        dets = []
        for name, overrides in spec.items():
            if name not in DETECTORS:
                raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}")
            det_cls = DETECTORS[name]
            dets.append(det_cls(_config_from(det_cls.config_cls, overrides)))
        return cls(dets)

    def ingest(self, records: Iterable[Record | Mapping[str, Any]]) -> list[DetectorWarning]:
        parsed = [Record.parse(r) for r in records]
        warnings = [w for det in self.detectors for w in det.ingest(parsed)]
        return sorted(warnings, key=lambda w: (w.step, w.detector))

    def to_dict(self) -> dict[str, Any]:
        return {"detectors": [d.to_dict() for d in self.detectors]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorSet:
        return cls([DETECTORS[d["detector"]].from_dict(d) for d in data.get("detectors", [])])
