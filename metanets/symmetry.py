"""Permutation symmetries drawn from a description and applied to a state dict (they leave the function unchanged)."""
from __future__ import annotations

import torch

from .architecture.description import ArchitectureDescription


def _parents_first(desc: ArchitectureDescription) -> list[str]:
    done, order = set(), []

    def visit(name):
        if name in done:
            return
        parent = desc.groups[name].parent
        if parent is not None:
            visit(parent)
        done.add(name)
        order.append(name)

    for name in desc.groups:
        visit(name)
    return order


def random_symmetry(desc: ArchitectureDescription, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One permutation per group: free on permutable groups, block-wise (heads, norm groups) on split groups.

    ``perm[i]`` is the old index of the neuron that ends up at position i.
    """
    perms: dict[str, torch.Tensor] = {}
    for name in _parents_first(desc):
        g = desc.groups[name]
        if g.parent is None:
            perms[name] = torch.randperm(g.size, generator=generator) if g.permutable else torch.arange(g.size)
            continue
        blocks = perms[g.parent]
        k = g.size // len(blocks)
        if g.permutable:
            within = torch.rand(len(blocks), k, generator=generator).argsort(dim=1)
        else:
            within = torch.arange(k).expand(len(blocks), k)
        perms[name] = (blocks[:, None] * k + within).reshape(-1)
    return perms


def axis_permutation(desc: ArchitectureDescription, segments: list[str], size: int,
                     perms: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The index permutation of one tensor axis (segments concatenated), or None when nothing moves."""
    if all(s.startswith("@") for s in segments):
        return None
    parts, off = [], 0
    for s in segments:
        n = size if s.startswith("@") else desc.groups[s].size
        parts.append(torch.arange(n) + off if s.startswith("@") else perms[s] + off)
        off += n
    return torch.cat(parts)


def apply_symmetry(desc: ArchitectureDescription, state_dict: dict[str, torch.Tensor],
                   perms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every axis re-indexed by its groups' permutations (tied tensors stay tied)."""
    out = {}
    for name, t in desc.tensors.items():
        if t.tied_to:
            continue
        x = state_dict[name]
        for axis, segments in enumerate(t.axes):
            p = axis_permutation(desc, segments, x.shape[axis], perms)
            if p is not None:
                x = x.index_select(axis, p)
        out[name] = x
    for name, t in desc.tensors.items():
        if t.tied_to:
            out[name] = out[t.tied_to]
    return {name: out[name] for name in state_dict}
