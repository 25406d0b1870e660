"""Shared preprocessing of checkpoints: architecture signatures, cached descriptions, per-role standardisation."""
from __future__ import annotations

import json
import math

import torch

from .architecture import ArchitectureError, describe
from .architecture.description import ArchitectureDescription
from .errors import MetanetError


def signature(state_dict: dict[str, torch.Tensor]) -> tuple:
    """Keys, shapes and float-ness in order: equal signatures mean the same architecture for UNF and StatNN."""
    return tuple((k, tuple(v.shape), v.is_floating_point()) for k, v in state_dict.items())


def float_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state_dict.items() if v.is_floating_point() and v.numel() > 1
            and not k.endswith(("running_mean", "running_var"))]


class Describer:
    """``describe`` once per distinct signature and hints (a zoo has one or a few architectures).

    ``hints`` apply to every checkpoint; a checkpoint's own ``hints`` (say, its activation) override them key by key.
    """

    def __init__(self, hints: dict | None = None):
        self.hints, self.cache = hints, {}

    def __call__(self, state_dict: dict[str, torch.Tensor], where: str = "checkpoint",
                 hints: dict | None = None) -> ArchitectureDescription:
        merged = {**(self.hints or {}), **hints} if hints else self.hints
        key = (signature(state_dict), json.dumps(merged, sort_keys=True, default=str))
        if key not in self.cache:
            try:
                self.cache[key] = describe(state_dict, merged)
            except ArchitectureError as exc:
                raise MetanetError(f"{where}: {exc}") from exc
        return self.cache[key]


def role(desc: ArchitectureDescription, key: str) -> str:
    t = desc.tensors[key]
    return f"{desc.op(t.op).kind}.{t.role}"


class Standardizer:
    """(x - mean) / std per tensor name, fitted on training checkpoints; unseen names use their role's statistics."""

    def __init__(self, by_name: dict[str, list[float]] | None = None, by_role: dict[str, list[float]] | None = None):
        self.by_name, self.by_role = by_name or {}, by_role or {}

    @classmethod
    def fit(cls, descs: list[ArchitectureDescription], state_dicts: list[dict[str, torch.Tensor]]) -> Standardizer:
        names: dict[str, list[torch.Tensor]] = {}
        roles: dict[str, list[torch.Tensor]] = {}
        for desc, sd in zip(descs, state_dicts):
            for k, t in desc.tensors.items():
                if t.is_edge:
                    v = sd[k].double().reshape(-1)
                    names.setdefault(k, []).append(v)
                    roles.setdefault(role(desc, k), []).append(v)

        def stats(groups):
            out = {}
            for k, vs in groups.items():
                v = torch.cat(vs)
                out[k] = [float(v.mean()), float(v.std(unbiased=False).clamp_min(1e-8))]
            return out

        return cls(stats(names), stats(roles))

    def __call__(self, desc: ArchitectureDescription, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(state_dict)
        for k, t in desc.tensors.items():
            if not t.is_edge:
                continue
            mean, std = self.by_name.get(k) or self.by_role.get(role(desc, k)) or (0.0, 1.0)
            out[k] = (state_dict[k].double() - mean) / std
            out[k] = out[k].to(state_dict[k].dtype)
        return out

    def to_json(self) -> dict:
        return json.loads(json.dumps({"by_name": self.by_name, "by_role": self.by_role}))


def rms_normalize(desc: ArchitectureDescription, state_dict: dict[str, torch.Tensor],
                  eps: float = 1e-6) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Every edge tensor divided by its root mean square in this checkpoint, and the log of that RMS per tensor.

    Weights of one zoo span orders of magnitude (init scales, learning rates, training time): standardised with
    zoo-wide statistics, small-scale networks look all zero and a few large ones dominate. Split into shape
    (unit RMS) and scale (log RMS, an invariant of every permutation), both stay visible.
    """
    out, log_rms = dict(state_dict), {}
    for k, t in desc.tensors.items():
        if not t.is_edge:
            continue
        v = state_dict[k].double()
        rms = float(v.pow(2).mean().sqrt()) if v.numel() else 0.0
        out[k] = (v / (rms + eps)).to(state_dict[k].dtype)
        log_rms[k] = math.log(rms + eps)
    return out, log_rms


def edge_log_rms(desc: ArchitectureDescription, log_rms: dict[str, float], num_edges: int) -> torch.Tensor:
    """(num_edges, 1): the log RMS of each edge's tensor in the vector-mode graph, 0 on the fixed-value extra edges."""
    from .graph.build import edge_blocks
    from .graph.layout import layout

    col = torch.zeros(num_edges, 1)
    for name, (off, n) in edge_blocks(desc, layout(desc), "vector").items():
        col[off:off + n] = log_rms[name]
    return col
