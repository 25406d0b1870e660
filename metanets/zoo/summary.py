"""Label distributions of a zoo: is the spread wide enough to rank?"""
from __future__ import annotations

import torch

from .recipe import ZooMember


def _stats(values: list[float]) -> dict:
    v = torch.tensor(values, dtype=torch.float64)
    q = torch.quantile(v, torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64)).tolist()
    return {"n": len(values), "mean": float(v.mean()), "std": float(v.std()) if len(v) > 1 else 0.0,
            **dict(zip(("min", "p10", "p25", "median", "p75", "p90", "max"), q))}


def label_summary(members: list[ZooMember]) -> dict:
    """Per numeric label: quantiles over the zoo (CNN zoos also per epoch); class counts for INR digits."""
    out = {}
    if members and "digit" in members[0].labels:
        counts: dict[int, int] = {}
        for m in members:
            counts[m.labels["digit"]] = counts.get(m.labels["digit"], 0) + 1
        return {"digit_counts": dict(sorted(counts.items())), "mse": _stats([m.labels["mse"] for m in members])}
    for key in ("test_accuracy", "generalization_gap"):
        out[key] = _stats([m.labels[key] for m in members])
    epochs = sorted({m.labels["epoch"] for m in members})
    out["test_accuracy_by_epoch"] = {e: _stats([m.labels["test_accuracy"] for m in members if m.labels["epoch"] == e])
                                     for e in epochs}
    out["diverged_runs"] = len({m.run for m in members if m.labels["diverged"]})
    return out
