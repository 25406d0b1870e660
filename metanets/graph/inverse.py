"""The exact inverse of the graph builder: edge (and integer-buffer) values back to a state dict, bit for bit."""
from __future__ import annotations

import math

import torch
from torch_geometric.data import Data

from ..architecture.description import ArchitectureDescription
from .build import kernel_window, edge_blocks, is_vectorised
from .layout import layout


def graph_to_state_dict(desc: ArchitectureDescription, data: Data) -> dict[str, torch.Tensor]:
    """Read every tensor back from ``data.edge_attr`` (e.g. a metanetwork's per-edge output) in its own dtype."""
    mode = data.mode if isinstance(data.mode, str) else data.mode[0]
    box = tuple(data.grid) if mode == "vector" else (1, 1, 1)
    if mode == "vector" and isinstance(data.grid[0], (list, tuple)):
        box = tuple(data.grid[0])
    centre = (math.prod(box) - 1) // 2
    blocks = edge_blocks(desc, layout(desc), mode)
    out: dict[str, torch.Tensor] = {}
    stores = {True: data.float_buffers, False: data.int_buffers}  # constants beside the edges, by float-ness
    offsets = {True: 0, False: 0}
    for name, t in desc.tensors.items():
        dtype = getattr(torch, t.dtype)
        if t.tied_to:
            continue
        if name not in blocks:
            n, kind = math.prod(t.shape), dtype.is_floating_point
            out[name] = stores[kind][offsets[kind]:offsets[kind] + n].view(t.shape).to(dtype)
            offsets[kind] += n
            continue
        off, n = blocks[name]
        vals = data.edge_attr[off:off + n]
        if is_vectorised(desc, name, mode):
            k = tuple(t.shape[2:])
            full = vals.view(t.shape[0], t.shape[1], *box)[(..., *kernel_window(k, box))]
            out[name] = full.reshape(t.shape).to(dtype).clone()
        else:
            out[name] = vals[:, centre].reshape(t.shape).to(dtype).clone()
    for name, t in desc.tensors.items():
        if t.tied_to:
            out[name] = out[t.tied_to]
    return {name: out[name] for name in desc.tensors}
