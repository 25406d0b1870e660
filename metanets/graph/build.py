"""Build the GMN parameter graph: one edge per weight (or per channel pair in vector mode), with vectorised fills."""
from __future__ import annotations

import math

import torch
from torch_geometric.data import Data

from ..architecture.description import ArchitectureDescription
from ..architecture.errors import ArchitectureError
from .layout import Layout, Recipe, layout


def value_dtype(desc: ArchitectureDescription) -> torch.dtype:
    """The one float dtype all edge values are stored in: exact for every float tensor of the checkpoint."""
    dtype = None
    for t in desc.tensors.values():
        d = getattr(torch, t.dtype)
        if d.is_floating_point:
            dtype = d if dtype is None else torch.promote_types(dtype, d)
    return dtype or torch.float32


def is_vectorised(desc: ArchitectureDescription, name: str, mode: str) -> bool:
    t = desc.tensors[name]
    return mode == "vector" and t.role == "weight" and desc.op(t.op).kind == "conv"


def kernel_grid(desc: ArchitectureDescription, grid: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """The (d, h, w) box every kernel is centred in for vector mode; the largest kernel unless given."""
    sizes = [tuple(t.shape[2:]) for n, t in desc.tensors.items() if is_vectorised(desc, n, "vector")]
    box = [1, 1, 1]
    for k in sizes:
        k3 = (1,) * (3 - len(k)) + k
        box = [max(a, b) for a, b in zip(box, k3)]
    if grid is not None:
        grid = tuple((1,) * (3 - len(grid)) + tuple(grid))
        if any(g < b for g, b in zip(grid, box)):
            raise ArchitectureError(f"kernel grid {grid} is smaller than the largest kernel {tuple(box)}")
        return grid
    return tuple(box)


def kernel_window(kernel: tuple[int, ...], grid: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    k3 = (1,) * (3 - len(kernel)) + tuple(kernel)
    return tuple(slice((g - k) // 2, (g - k) // 2 + k) for g, k in zip(grid, k3))


def edge_blocks(desc: ArchitectureDescription, lay: Layout, mode: str) -> dict[str, tuple[int, int]]:
    """Offset and edge count of every tensor's block, in the order the graph stores them."""
    blocks, off = {}, 0
    for name, t in desc.tensors.items():
        if name not in lay.recipes:
            continue
        n = t.shape[0] * t.shape[1] if is_vectorised(desc, name, mode) else math.prod(t.shape)
        blocks[name] = (off, n)
        off += n
    return blocks


def _bcast(ids: torch.Tensor, axis: int | None, shape: tuple[int, ...]) -> torch.Tensor:
    if axis is None:
        return ids.reshape((1,) * len(shape)).expand(shape)
    view = [1] * len(shape)
    view[axis] = -1
    return ids.view(view).expand(shape)


def _fill_indices(r: Recipe, shape: tuple[int, ...], index: torch.Tensor, types: torch.Tensor) -> None:
    index[0].view(shape).copy_(_bcast(r.src, r.src_axis, shape))
    index[1].view(shape).copy_(_bcast(r.dst, r.dst_axis, shape))
    if isinstance(r.types, torch.Tensor):
        types.view(shape).copy_(_bcast(r.types, r.dst_axis, shape))
    else:
        types.fill_(r.types)


def to_graph(desc: ArchitectureDescription, state_dict: dict[str, torch.Tensor], mode: str = "scalar",
             grid: tuple[int, ...] | None = None) -> Data:
    """The parameter graph of ``state_dict``.

    ``mode="scalar"``: one edge per parameter scalar, kernel position in ``edge_pos``. ``mode="vector"``: one edge
    per conv channel pair carrying the kernel centred in ``grid`` (``edge_attr`` has prod(grid) columns).
    Edges are the tensors' blocks in description order, then the fixed-value extra edges. ``node_act`` holds the
    ``ACTIVATION_TYPES`` index of the function applied to each node's value (GMN's activation features).
    """
    if mode not in ("scalar", "vector"):
        raise ValueError(f"mode must be 'scalar' or 'vector', got {mode!r}")
    lay = layout(desc)
    dtype = value_dtype(desc)
    box = kernel_grid(desc, grid) if mode == "vector" else (1, 1, 1)
    width = math.prod(box)
    blocks = edge_blocks(desc, lay, mode)
    missing = [n for n, t in desc.tensors.items() if n not in blocks and t.is_edge]
    if missing:
        raise ArchitectureError([f"tensor {n!r} has no place in the graph" for n in missing])
    n_tensor = sum(n for _, n in blocks.values())
    n_extra = sum(len(dst) for _, dst, _ in lay.extras)
    e = n_tensor + n_extra
    edge_index = torch.empty(2, e, dtype=torch.long)
    edge_type = torch.empty(e, dtype=torch.int32)
    if mode == "scalar":
        edge_attr = torch.empty(e, 1, dtype=dtype)
        edge_geom = torch.full((e, 3), -1, dtype=torch.int8)  # kernel position (d, h, w)
    else:
        edge_attr = torch.zeros(e, width, dtype=dtype)
        edge_geom = torch.ones(e, 3, dtype=torch.int8)  # kernel size (d, h, w)
    centre = (width - 1) // 2 if mode == "vector" else 0
    for name, (off, n) in blocks.items():
        r, t = lay.recipes[name], state_dict[name]
        sl = slice(off, off + n)
        if is_vectorised(desc, name, mode):
            shape = tuple(t.shape[:2])
            _fill_indices(r, shape, edge_index[:, sl], edge_type[sl])
            k = tuple(t.shape[2:])
            edge_attr[sl].view(*shape, *box)[(..., *kernel_window(k, box))].copy_(t.view(*shape, *((1,) * (3 - len(k))), *k))
            edge_geom[sl] = torch.tensor((1,) * (3 - len(k)) + k, dtype=torch.int8)
            continue
        shape = tuple(t.shape)
        _fill_indices(r, shape, edge_index[:, sl], edge_type[sl])
        edge_attr[sl, centre].view(shape).copy_(t)
        if mode == "scalar":
            for j, axis in enumerate(r.kernel_axes[-3:]):
                col = 3 - len(r.kernel_axes) + j
                edge_geom[sl, col].view(shape).copy_(_bcast(torch.arange(shape[axis], dtype=torch.int8), axis, shape))
    off = n_tensor
    for src, dst, kind in lay.extras:
        sl = slice(off, off + len(dst))
        edge_index[0, sl], edge_index[1, sl] = src, dst
        edge_type[sl] = kind
        edge_attr[sl, centre] = 1.0
        off += len(dst)
    rest = [n for n, t in desc.tensors.items() if not t.is_edge and not t.tied_to]
    ints = [state_dict[n].reshape(-1).long() for n in rest if not state_dict[n].is_floating_point()]
    floats = [state_dict[n].reshape(-1).double() for n in rest if state_dict[n].is_floating_point()]
    x = torch.stack((torch.cat(lay.node_type), torch.cat(lay.node_layer), torch.cat(lay.node_index)), dim=1)
    data = Data(x=x, edge_index=edge_index, edge_attr=edge_attr, edge_type=edge_type,
                int_buffers=torch.cat(ints) if ints else torch.zeros(0, dtype=torch.long),
                float_buffers=torch.cat(floats) if floats else torch.zeros(0, dtype=torch.float64),
                num_nodes=lay.num_nodes, node_act=lay.node_activation())
    if mode == "scalar":
        data.edge_pos = edge_geom
    else:
        data.edge_ksize = edge_geom
    data.mode, data.grid = mode, box
    return data


def expected_edges(desc: ArchitectureDescription, mode: str = "scalar") -> dict[str, int]:
    """Edge count by origin: ``parameters`` (scalars, or conv channel pairs in vector mode), ``running_stats``
    (BatchNorm buffers) and one entry per extra edge type; they sum to the graph's edge count."""
    from .types import EDGE_TYPES

    lay = layout(desc)
    counts = {"parameters": 0, "running_stats": 0}
    for name, (_, n) in edge_blocks(desc, lay, mode).items():
        counts["running_stats" if desc.tensors[name].buffer else "parameters"] += n
    for _, dst, kind in lay.extras:
        counts[EDGE_TYPES[kind]] = counts.get(EDGE_TYPES[kind], 0) + len(dst)
    return counts
