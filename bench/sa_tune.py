"""Tune each detector on saved validity runs, then judge the chosen settings on runs it did not see.

Reads the telemetry that ``bench/sa_validity.py --save`` wrote, grid-searches each detector's settings on the runs
of the tuning seeds (score: hits minus 2 x false alarms, ties broken by median lead), and reports the best settings
on the held-out seeds next to the defaults. Every detector gets a grid, so the comparison stays fair. Prints JSON.

    PYTHONPATH=. python bench/sa_tune.py runs.json.gz --preset cpu --tune-seeds 0
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script, bench/metanets.py would shadow the metanets package
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sa_validity import PRESETS, judge_run, summarise  # noqa: E402

SA_GRID = {
    "aggregate": ["median", "fraction"],
    "median_threshold": [0.2, 0.3, 0.4],
    "fraction_threshold": [0.25, 0.4, 0.5],
    "consecutive": [2, 3, 5],
    "baseline_skip": [0, 10, 20],
    "min_baseline": [0.3, 0.5],
}
SPIKE_GRID = {"z_threshold": [4.0, 6.0, 8.0], "window": [20, 50, 100]}
GRIDS = {
    "sa_collapse": SA_GRID,
    "grad_norm_spike": SPIKE_GRID,
    "loss_spike": SPIKE_GRID,
    "weight_norm_growth": {"ratio_threshold": [1.5, 2.0, 3.0], "window": [10, 20, 50]},
}


def candidates(grid: dict) -> list[dict]:
    """Every grid point, without the duplicates that SA's unused threshold of each aggregate would create."""
    out, seen = [], set()
    for values in itertools.product(*grid.values()):
        cfg = dict(zip(grid, values))
        if "aggregate" in cfg:
            cfg.pop("fraction_threshold" if cfg["aggregate"] == "median" else "median_threshold")
        key = json.dumps(cfg, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def score(runs: list, horizon: int, detector: str, config: dict | None) -> dict:
    rows = [judge_run(r[0], r[1], r[2], {detector: config}) for r in runs]
    return summarise(rows, horizon)[detector]


def tune(runs: list, horizon: int, detector: str) -> dict | None:
    """The grid point with the most hits minus twice the false alarms, then the longest median lead."""
    best, best_key = None, None
    for cfg in candidates(GRIDS[detector]):
        s = score(runs, horizon, detector, cfg)
        key = (s["hits"] - 2 * s["false_alarms"], s["median_lead_steps"] or 0)
        if best_key is None or key > best_key:
            best, best_key = cfg, key
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--detectors", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    with gzip.open(args.saved, "rt") as fh:
        saved = json.load(fh)
    specs = {r.name: r for r in preset.runs}
    runs = [(specs[c["name"]], c["losses"], c["records"]) for c in saved["runs"]]
    tuning = [r for r in runs if r[0].seed in args.tune_seeds]
    held = [r for r in runs if r[0].seed not in args.tune_seeds]

    out = {"tuned_on_seeds": args.tune_seeds, "n_tune_runs": len(tuning), "n_held_out_runs": len(held), "detectors": {}}
    for detector in args.detectors:
        best = tune(tuning, preset.horizon, detector)
        out["detectors"][detector] = {
            "grid_points": len(candidates(GRIDS[detector])), "best": best,
            "tune": {"default": score(tuning, preset.horizon, detector, None),
                     "best": score(tuning, preset.horizon, detector, best)},
            "held_out": {"default": score(held, preset.horizon, detector, None),
                         "best": score(held, preset.horizon, detector, best)},
        }
        print(f"{detector}: {best}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
