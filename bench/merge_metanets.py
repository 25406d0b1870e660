"""Merge ``bench/metanets.py`` result files of one zoo (say, seeds run as separate processes) into one, with the
summary and the paired margins of GMN and UNF over each peer: ``python bench/merge_metanets.py OUT IN [IN ...]``.
An input written ``PATH:MODEL[,MODEL...]`` contributes only those models' runs (say, an older file's peers)."""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bench_metanets", Path(__file__).with_name("metanets.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # by path: the name ``metanets`` is the package


def paired_margins(runs: list[dict]) -> dict:
    """Per task, ours (GMN, UNF) minus each peer (StatNN, NFN) seed by seed, on the seeds both have."""
    score = {(r["task"], r["model"], r["seed"]): r["test"]["kendall_tau" if r["task"] == "cnn" else "accuracy"]
             for r in runs}
    out = {}
    for task in sorted({r["task"] for r in runs}):
        for ours in ("gmn", "unf"):
            for peer in ("statnn", "nfn"):
                seeds = sorted(s for t, m, s in score if t == task and m == ours and (task, peer, s) in score)
                if not seeds:
                    continue
                d = [score[task, ours, s] - score[task, peer, s] for s in seeds]
                out[f"{task}/{ours}-{peer}"] = {"seeds": seeds, "margins": d, "mean": statistics.mean(d),
                                                "std": statistics.stdev(d) if len(d) > 1 else 0.0,
                                                "wins": sum(x > 0 for x in d)}
    return out


def _source(arg: str) -> tuple[Path, set[str] | None]:
    path, _, models = arg.partition(":")
    return Path(path), set(models.split(",")) if models else None


def main(argv: list[str]) -> None:
    out, sources = Path(argv[0]), [_source(a) for a in argv[1:]]
    parts = [json.loads(p.read_text()) for p, _ in sources]
    seen, runs = set(), []
    for r in (r for part, (_, keep) in zip(parts, sources) for r in part["runs"] if keep is None or r["model"] in keep):
        key = (r["task"], r["model"], r["seed"])
        if key in seen:
            raise SystemExit(f"{key} appears twice in {argv[1:]}")
        seen.add(key)
        runs.append(r)
    runs.sort(key=lambda r: (r["task"], r["seed"]))
    merged = {**parts[0], "runs": runs, "merged_from": argv[1:],
              "summary": bench.summarise(runs), "paired_margins": paired_margins(runs)}
    out.write_text(json.dumps(merged, indent=1))
    for key, v in {**merged["summary"], **merged["paired_margins"]}.items():
        print(f"{key:20s} mean {v['mean']:+.3f} std {v['std']:.3f}", v.get("values", v.get("margins")))


if __name__ == "__main__":
    main(sys.argv[1:])
