"""Where every tensor lives in the graph: node sets per value, and per tensor which axes give source and target.

Both the builder and the inverse use this walk, so edge blocks are laid out identically in both directions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..architecture.description import SPATIAL, ArchitectureDescription, Op
from .types import ACTIVATION, EDGE, NODE


@dataclass
class Recipe:
    """Edges of one tensor: element (.., i_src, .., i_dst, ..) goes from ``src[i_src]`` to ``dst[i_dst]``.

    ``src_axis`` None means every element comes from the single node ``src[0]`` (a bias or norm node).
    ``types`` is one edge type, or one per index of the destination axis (packed QKV).
    """

    tensor: str
    src_axis: int | None
    src: torch.Tensor
    dst_axis: int
    dst: torch.Tensor
    types: int | torch.Tensor
    kernel_axes: tuple[int, ...] = ()


@dataclass
class Layout:
    """Nodes (type, layer, index feature), tensor recipes in state-dict order, fixed-value extra edges, and the
    activation function applied to node sets (``activations``: node ids, ``ACTIVATION`` index)."""

    node_type: list[torch.Tensor] = field(default_factory=list)
    node_layer: list[torch.Tensor] = field(default_factory=list)
    node_index: list[torch.Tensor] = field(default_factory=list)
    recipes: dict[str, Recipe] = field(default_factory=dict)
    extras: list[tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=list)
    activations: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    num_nodes: int = 0

    def nodes(self, desc: ArchitectureDescription, group: str, layer: int, node_type: str | None = None,
              size: int | None = None) -> torch.Tensor:
        g = desc.groups[group]
        n = size or g.size
        ids = torch.arange(self.num_nodes, self.num_nodes + n)
        self.num_nodes += n
        self.node_type.append(torch.full((n,), NODE[node_type or g.kind]))
        self.node_layer.append(torch.full((n,), layer))
        self.node_index.append(_index_feature(desc, group, n))
        return ids

    def extra(self, src: torch.Tensor, dst: torch.Tensor, kind: str) -> None:
        self.extras.append((src, dst, EDGE[kind]))

    def node_activation(self) -> torch.Tensor:
        """(num_nodes,) ``ACTIVATION`` index of each node; a later function on the same nodes wins."""
        act = torch.zeros(self.num_nodes, dtype=torch.long)
        for ids, kind in self.activations:
            act[ids] = kind
        return act


def _index_feature(desc: ArchitectureDescription, group: str, n: int) -> torch.Tensor:
    """Position of a neuron where it cannot be permuted (inputs, outputs, positions in a block), else -1."""
    g = desc.groups[group]
    if g.parent is None:
        return torch.arange(n) if not g.permutable else torch.full((n,), -1)
    parent = desc.groups[g.parent]
    if not parent.permutable and parent.parent is None:
        return torch.arange(n)
    return torch.arange(n) % (n // parent.size) if not g.permutable else torch.full((n,), -1)


# norm parameter role -> edge type and parameter-node type
_NORM_ROLES = {"weight": "norm_weight", "bias": "norm_bias", "running_mean": "running_mean",
               "running_var": "running_var"}


def layout(desc: ArchitectureDescription) -> Layout:
    """Walk the program once, creating node sets for values and a recipe for every tensor."""
    lay = Layout()
    nodes: dict[str, torch.Tensor] = {}
    uses: dict[str, int] = {}
    for op in desc.ops:
        for name in op.params.values():
            uses[name] = uses.get(name, 0) + 1
    tied = {n for n, k in uses.items() if k > 1} | {t.tied_to for t in desc.tensors.values() if t.tied_to}
    for inp in desc.inputs:
        if inp.kind != "tokens":
            nodes[inp.name] = lay.nodes(desc, desc.value_groups[inp.name], 0)
    for layer, op in enumerate(desc.ops, start=1):
        _RULES.get(op.kind, _alias)(desc, lay, nodes, op, layer, tied)
    order = [n for n, t in desc.tensors.items() if n in lay.recipes]
    lay.recipes = {n: lay.recipes[n] for n in order}
    return lay


def tensor_activations(desc: ArchitectureDescription) -> dict[str, int]:
    """``ACTIVATION`` index of the function applied to each graph tensor's target nodes (``none``: no function),
    the graph's ``node_act`` seen per tensor, for models that read tensors (UNF)."""
    lay = layout(desc)
    act = lay.node_activation()
    return {name: int(torch.mode(act[r.dst]).values) for name, r in lay.recipes.items()}


def _vector(desc, lay, op: Op, role: str, dst: torch.Tensor, layer: int, edge: str, node: str) -> None:
    name = op.params.get(role)
    if name is None or name in lay.recipes or not desc.tensors[name].is_edge:
        return
    src = lay.nodes(desc, desc.tensors[name].source, layer, node)
    lay.recipes[name] = Recipe(name, None, src, 0, dst, EDGE[edge])


def _matrix(desc, lay, op: Op, role: str, src: torch.Tensor, dst: torch.Tensor, edge, transposed=False) -> None:
    name = op.params[role]
    t = desc.tensors[name]
    kernel = tuple(i for i, a in enumerate(t.axes) if a == [SPATIAL])
    lay.recipes[name] = Recipe(name, 0 if transposed else 1, src, 1 if transposed else 0, dst,
                               edge if isinstance(edge, torch.Tensor) else EDGE[edge], kernel)


def _alias(desc, lay, nodes, op, layer, tied):
    if op.inputs[0] in nodes:
        nodes[op.output] = nodes[op.inputs[0]]


def _activation(desc, lay, nodes, op, layer, tied):
    """An elementwise function: its output is its input's nodes, which record the function."""
    _alias(desc, lay, nodes, op, layer, tied)
    if op.inputs[0] in nodes:
        lay.activations.append((nodes[op.inputs[0]], ACTIVATION.get(op.attrs.get("fn", "relu"), ACTIVATION["other"])))


def _linear(desc, lay, nodes, op, layer, tied):
    name = op.params["weight"]
    transposed = op.attrs.get("transposed", False)
    if name in lay.recipes:  # tied weight: read out onto the nodes the shared matrix already connects
        r = lay.recipes[name]
        out_axis = 1 if transposed else 0
        y = r.src if r.src_axis == out_axis else r.dst
    else:
        y = lay.nodes(desc, desc.value_groups[op.output], layer)
        _matrix(desc, lay, op, "weight", nodes[op.inputs[0]], y, "linear", transposed)
    _vector(desc, lay, op, "bias", y, layer, "bias", "bias")
    nodes[op.output] = y


def _conv(desc, lay, nodes, op, layer, tied):
    y = lay.nodes(desc, desc.value_groups[op.output], layer)
    _matrix(desc, lay, op, "weight", nodes[op.inputs[0]], y, "conv")
    _vector(desc, lay, op, "bias", y, layer, "bias", "bias")
    nodes[op.output] = y


def _norm(desc, lay, nodes, op, layer, tied):
    x = nodes[op.inputs[0]]
    if op.kind == "groupnorm" and op.attrs["num_groups"] > 1:
        g = desc.groups[desc.value_groups[op.output]].parent
        groups = lay.nodes(desc, g, layer, "norm_group")
        lay.extra(groups.repeat_interleave(len(x) // len(groups)), x, "norm_group")
    for role, kind in _NORM_ROLES.items():
        _vector(desc, lay, op, role, x, layer, kind, kind)
    nodes[op.output] = x


def _layerscale(desc, lay, nodes, op, layer, tied):
    nodes[op.output] = nodes[op.inputs[0]]
    _vector(desc, lay, op, "weight", nodes[op.output], layer, "layerscale", "norm_weight")


def _merge(desc, lay, nodes, op, layer, tied):
    a, b = nodes[op.inputs[0]], nodes[op.inputs[1]]
    old, new = (a, b) if a[0] < b[0] else (b, a)
    if old[0] != new[0]:
        lay.extra(old, new, "residual" if op.kind == "add" else "product")
    nodes[op.output] = new


def _flatten(desc, lay, nodes, op, layer, tied):
    x = nodes[op.inputs[0]]
    group = desc.value_groups[op.output]
    if desc.groups[group].size == len(x):
        nodes[op.output] = x
        return
    y = lay.nodes(desc, group, layer)
    lay.extra(x.repeat_interleave(len(y) // len(x)), y, "flatten")
    nodes[op.output] = y


def _embedding(desc, lay, nodes, op, layer, tied):
    name = op.params["weight"]
    t = desc.tensors[name]
    vocab = lay.nodes(desc, t.axes[0][0], layer)
    y = lay.nodes(desc, desc.value_groups[op.output], layer)
    _matrix(desc, lay, op, "weight", vocab, y, "tied_embedding" if name in tied else "embedding", transposed=True)
    nodes[op.inputs[0]], nodes[op.output] = vocab, y


def _table(desc, lay, nodes, op, layer, tied):
    """Learned positions (P, D) or (1, P, D) and token-type tables (V, D): index nodes to the value's nodes."""
    x = nodes[op.inputs[0]]
    name = op.params["weight"]
    t = desc.tensors[name]
    rows = lay.nodes(desc, t.axes[-2][0], layer)
    n = len(t.shape)
    lay.recipes[name] = Recipe(name, n - 2, rows, n - 1, x, EDGE["position" if op.kind == "add_positions"
                                                                   else "embedding"])
    nodes[op.output] = x


def _cls_token(desc, lay, nodes, op, layer, tied):
    x = nodes[op.inputs[0]]
    name = op.params["weight"]
    src = lay.nodes(desc, desc.tensors[name].source, layer, "cls")
    lay.recipes[name] = Recipe(name, None, src, 2, x, EDGE["cls"])
    nodes[op.output] = x


def _attention(desc, lay, nodes, op, layer, tied):
    x = nodes[op.inputs[0]]
    transposed = op.attrs.get("transposed", False)
    out_axis = 1 if transposed else 0
    if "qkv_weight" in op.params:
        gq, gk, gv = desc.tensors[op.params["qkv_weight"]].axes[out_axis]
    else:
        gq, gk, gv = (desc.tensors[op.params[f"{r}_weight"]].axes[out_axis][0] for r in "qkv")
    o = desc.tensors[op.params["o_weight"]]
    go = o.axes[0 if transposed else 1][0]
    heads = lay.nodes(desc, desc.groups[gq].parent, layer)
    sets: dict[str, torch.Tensor] = {}
    for g in (gq, gk, gv, go):
        if g not in sets:
            sets[g] = lay.nodes(desc, g, layer)
            lay.extra(heads.repeat_interleave(len(sets[g]) // len(heads)), sets[g], "head")
    y = lay.nodes(desc, desc.value_groups[op.output], layer)
    q, k, v = sets[gq], sets[gk], sets[gv]
    if "qkv_weight" in op.params:
        types = torch.cat([torch.full((len(s),), EDGE[e]) for s, e in ((q, "q"), (k, "k"), (v, "v"))])
        _matrix(desc, lay, op, "qkv_weight", x, torch.cat((q, k, v)), types, transposed)
        _vector(desc, lay, op, "qkv_bias", torch.cat((q, k, v)), layer, "bias", "bias")
    else:
        for role, s in (("q", q), ("k", k), ("v", v)):
            _matrix(desc, lay, op, f"{role}_weight", x, s, role, transposed)
            _vector(desc, lay, op, f"{role}_bias", s, layer, "bias", "bias")
    _matrix(desc, lay, op, "o_weight", sets[go], y, "o", transposed)
    _vector(desc, lay, op, "o_bias", y, layer, "bias", "bias")
    nodes[op.output] = y


_RULES = {"act": _activation, "linear": _linear, "conv": _conv, "batchnorm": _norm, "layernorm": _norm,
          "rmsnorm": _norm, "groupnorm": _norm, "layerscale": _layerscale, "add": _merge, "mul": _merge,
          "flatten": _flatten, "embedding": _embedding, "add_positions": _table, "add_embedding": _table,
          "cls_token": _cls_token, "attention": _attention}
