"""The UNF permutation spec: for every tensor (packed ones split into parts), one symbol per axis.

Axes whose group is split into blocks are reshaped into (blocks, within); head axes, spatial axes and
non-permutable groups get the symbol None (no permutation acts on them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .architecture.description import ArchitectureDescription


@dataclass
class UNFEntry:
    """A view of one tensor: ``tensor[slices].reshape(shape)`` has one symbol (or None) per axis."""

    key: str
    tensor: str
    slices: list[tuple[int, int]]
    shape: list[int]
    symbols: list[str | None]


def _axis_symbols(desc: ArchitectureDescription, group: str) -> tuple[list[int], list[str | None]]:
    """Sizes and symbols of one group's axis after splitting it along its parent chain."""
    g = desc.groups[group]
    if g.parent is None:
        return [g.size], [group if g.permutable and g.kind != "head" else None]
    sizes, symbols = _axis_symbols(desc, g.parent)
    k = g.size // desc.groups[g.parent].size
    return sizes + [k], symbols + [group if g.permutable else None]


def unf_spec(desc: ArchitectureDescription) -> list[UNFEntry]:
    """One entry per tensor, or per segment of a packed axis (``c_attn`` gives q, k and v entries)."""
    entries = []
    for name, t in desc.tensors.items():
        if not t.is_edge:
            continue
        packed = next((i for i, a in enumerate(t.axes) if len(a) > 1), None)
        pieces = [None] if packed is None else list(range(len(t.axes[packed])))
        off = 0
        for piece in pieces:
            slices, shape, symbols = [], [], []
            for axis, segments in enumerate(t.axes):
                seg = segments[0] if piece is None or axis != packed else segments[piece]
                size = t.shape[axis] if seg.startswith("@") else desc.groups[seg].size
                start = off if axis == packed else 0
                slices.append((start, start + size))
                if seg.startswith("@"):
                    shape.append(size)
                    symbols.append(None)
                else:
                    s, sym = _axis_symbols(desc, seg)
                    shape += s
                    symbols += sym
            if piece is not None:
                off += slices[packed][1] - slices[packed][0]
            key = name if piece is None else f"{name}[{piece}]"
            entries.append(UNFEntry(key, name, slices, shape, symbols))
    return entries


def unf_tensors(spec: list[UNFEntry], state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The views of ``state_dict`` that the spec describes, keyed like the spec."""
    out = {}
    for e in spec:
        x = state_dict[e.tensor]
        for axis, (a, b) in enumerate(e.slices):
            x = x.narrow(axis, a, b - a)
        out[e.key] = x.reshape(e.shape)
    return out
