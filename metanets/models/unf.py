"""Universal Neural Functionals (Zhou et al. 2024) in PyTorch, generated from a ``unf_spec``.

An equivariant layer maps every input tensor m to every output tensor l by a sum of basis maps, one per *valid
partition* of the axes of (l, m): a partition whose blocks only group axes of one symbol. A basis map takes input
diagonals where input axes share a block, averages blocks without output axes, and broadcasts / embeds on
diagonals into the output; each term mixes channels with its own (c_in, c_out) matrix. Axes without a symbol
(kernel positions, input features, output classes, heads) are never permuted, so they are folded into channels.
With ``activations`` every tensor also gets, as input channels, a learned embedding of the function applied to its
target neurons (``ACTIVATIONS`` in the input dict: one ``ACTIVATION_TYPES`` index per slot), constant over the
tensor and so invariant to every permutation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from ..errors import MetanetError
from ..graph.types import ACTIVATION_TYPES
from .pooling import READOUTS, STAT_COUNT, set_stats

ACTIVATIONS = "@activations"  # input dict key: (B, slots) activation indices, with ``activations``
ACTIVATION_CHANNELS = 2


@dataclass(frozen=True)
class Slot:
    """One spec entry as the layers see it: permutable axes (symbol, size) and the folded size of the others."""

    key: str
    symbols: tuple[str, ...]
    sizes: tuple[int, ...]
    fixed: int
    perm_axes: tuple[int, ...]
    fixed_axes: tuple[int, ...]

    @classmethod
    def from_entry(cls, key: str, shape: list[int], symbols: list[str | None]) -> Slot:
        perm = tuple(i for i, s in enumerate(symbols) if s is not None)
        fixed = tuple(i for i, s in enumerate(symbols) if s is None)
        return cls(key, tuple(symbols[i] for i in perm), tuple(shape[i] for i in perm),
                   math.prod(shape[i] for i in fixed), perm, fixed)

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *shape, C) -> (B, *permutable sizes, fixed * C): fixed axes become channels."""
        b, c = x.shape[0], x.shape[-1]
        order = [0, *(a + 1 for a in self.perm_axes), *(a + 1 for a in self.fixed_axes), x.dim() - 1]
        return x.permute(order).reshape(b, *self.sizes, self.fixed * c)


@cache
def bell(n: int) -> int:
    """Number of set partitions of n items (Bell triangle)."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for v in row:
            nxt.append(nxt[-1] + v)
        row = nxt
    return row[0]


def set_partitions(items: list) -> list[list[list]]:
    """All partitions of ``items`` into non-empty blocks."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for p in set_partitions(rest):
        out.append([[first], *p])
        for i in range(len(p)):
            out.append([*p[:i], [first, *p[i]], *p[i + 1:]])
    return out


def valid_partitions(out_symbols: tuple, in_symbols: tuple) -> list[list[list[tuple[str, int]]]]:
    """Partitions of the axes ('o', i) and ('i', j) whose blocks each hold axes of a single symbol."""
    per_symbol = []
    for s in dict.fromkeys(out_symbols + in_symbols):
        axes = [("o", i) for i, t in enumerate(out_symbols) if t == s] + [("i", j) for j, t in enumerate(in_symbols) if t == s]
        per_symbol.append(set_partitions(axes))
    result = [[]]
    for options in per_symbol:
        result = [p + q for p in result for q in options]
    return result


def basis_size(slots: list[Slot]) -> int:
    """Terms of one layer by the Bell formula: sum over (l, m) of prod over symbols of Bell(c_s(l) + c_s(m))."""
    total = 0
    for lo in slots:
        for mi in slots:
            symbols = set(lo.symbols) | set(mi.symbols)
            total += math.prod(bell(lo.symbols.count(s) + mi.symbols.count(s)) for s in symbols)
    return total


class BasisTerm:
    """One basis map E_P as an einsum plan: x (B, in axes, C) . theta (C, D) [. identities . ones] -> (B, out axes, D)."""

    def __init__(self, partition, out_slot: Slot, in_slot: Slot):
        label = {ax: k for k, block in enumerate(partition) for ax in block}
        n = len(partition)
        self.batch, self.c_in, self.c_out = n, n + 1, n + 2
        self.in_sub = [self.batch, *(label[("i", j)] for j in range(len(in_slot.symbols))), self.c_in]
        self.extra, self.denominator, next_id = [], 1, n + 3
        out_axes = []
        for k, block in enumerate(partition):
            outs = [i for t, i in block if t == "o"]
            size = (out_slot.sizes[outs[0]] if outs else in_slot.sizes[next(j for t, j in block if t == "i")])
            if not outs:
                self.denominator *= size  # a block of input axes only: averaged
                continue
            if all(t == "o" for t, _ in block):
                self.extra.append(("ones", size, [k]))  # a block of output axes only: broadcast
            ids = [k]
            for _ in outs[1:]:  # several output axes in one block: embedded on their diagonal
                self.extra.append(("eye", size, [k, next_id]))
                ids.append(next_id)
                next_id += 1
            out_axes += list(zip(outs, ids))
        self.out_sub = [self.batch, *(i for _, i in sorted(out_axes)), self.c_out]

    def __call__(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        operands = [x, self.in_sub, theta, [self.c_in, self.c_out]]
        for kind, size, sub in self.extra:
            t = torch.ones(size, dtype=x.dtype, device=x.device) if kind == "ones" else torch.eye(size, dtype=x.dtype, device=x.device)
            operands += [t, sub]
        y = torch.einsum(*operands, self.out_sub)
        return y / self.denominator if self.denominator != 1 else y


class UNFLayer(nn.Module):
    """Equivariant linear map from every slot (c_in channels) to every slot (c_out channels), plus a bias."""

    def __init__(self, slots: list[Slot], c_in: int, c_out: int):
        super().__init__()
        self.slots, self.c_out = slots, c_out
        self.terms: list[tuple[int, int, BasisTerm]] = []
        thetas = []
        for li, lo in enumerate(slots):
            fan_in = sum(c_in * mi.fixed * len(valid_partitions(lo.symbols, mi.symbols)) for mi in slots)
            for mi_idx, mi in enumerate(slots):
                for p in valid_partitions(lo.symbols, mi.symbols):
                    self.terms.append((li, mi_idx, BasisTerm(p, lo, mi)))
                    thetas.append(nn.Parameter(torch.randn(c_in * mi.fixed, c_out * lo.fixed) / math.sqrt(fan_in)))
        self.thetas = nn.ParameterList(thetas)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(c_out * s.fixed)) for s in slots)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [None] * len(self.slots)
        for (li, mi, term), theta in zip(self.terms, self.thetas):
            y = term(xs[mi], theta)
            out[li] = y if out[li] is None else out[li] + y
        return [y + b for y, b in zip(out, self.biases)]


class UNF(nn.Module):
    """Equivariant UNF layers with ReLU, invariant pooling over permutable axes, then an MLP head.

    ``readout="mean"`` pools the last layer's features by their mean; ``"stats"`` pools the input and every
    layer's output (jumping knowledge) by mean, std, max and min, each tensor apart (so ``"layer_stats"``, GMN's
    per-layer pooling, is the same here).
    """

    def __init__(self, entries: list[dict], out_dim: int, channels: int = 8, layers: int = 3, hidden: int = 128,
                 max_terms: int = 4000, pool_norm: bool = False, readout: str = "mean", in_channels: int = 1,
                 activations: bool = False):
        super().__init__()
        if readout not in READOUTS:
            raise MetanetError(f"unknown readout {readout!r} (known: {list(READOUTS)})")
        self.readout = readout
        self.slots = [Slot.from_entry(e["key"], e["shape"], e["symbols"]) for e in entries]
        size = basis_size(self.slots)
        if size * layers > max_terms:
            raise MetanetError(f"UNF basis too large: {size} terms per layer x {layers} layers > max_terms={max_terms}"
                               f" (architecture has {len(self.slots)} tensors); use GMN or StatNN for it")
        self.activation = nn.Embedding(len(ACTIVATION_TYPES), ACTIVATION_CHANNELS) if activations else None
        in_channels += ACTIVATION_CHANNELS if activations else 0
        widths = [in_channels] + [channels] * layers
        self.layers = nn.ModuleList(UNFLayer(self.slots, a, b) for a, b in zip(widths, widths[1:]))
        if readout == "mean":
            pooled = sum(s.fixed * channels for s in self.slots)
        else:
            per_layer = lambda c: sum(s.fixed * c * (STAT_COUNT if s.symbols else 1) for s in self.slots)  # noqa: E731
            pooled = per_layer(in_channels) + layers * per_layer(channels)
        # pool_norm: standardise the pooled features over checkpoints (BatchNorm), as StatNN does with its
        # statistics; differences between checkpoints are small next to the spread inside one checkpoint.
        self.pool_norm = nn.BatchNorm1d(pooled) if pool_norm else nn.Identity()
        self.head = nn.Sequential(nn.Linear(pooled, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``tensors[key]`` is (B, *entry shape, in_channels); returns (outputs (B, out_dim), embeddings (B, hidden))."""
        xs = [s.fold(self._with_activation(tensors, i, s)) for i, s in enumerate(self.slots)]
        pools = [self._pool(xs)] if self.readout != "mean" else []
        for i, layer in enumerate(self.layers):
            xs = layer(xs)
            if i < len(self.layers) - 1:
                xs = [torch.relu(x) for x in xs]
            if self.readout != "mean":
                pools.append(self._pool(xs))
        if self.readout == "mean":
            pools = [torch.cat([x.flatten(1, -2).mean(1) if x.dim() > 2 else x for x in xs], dim=1)]
        emb = self.head(self.pool_norm(torch.cat(pools, dim=1)))
        return self.out(emb), emb

    def _with_activation(self, tensors: dict[str, torch.Tensor], i: int, slot: Slot) -> torch.Tensor:
        """Slot ``i``'s input, with its activation embedding broadcast over its entries as more channels."""
        x = tensors[slot.key]
        if self.activation is None:
            return x
        a = self.activation(tensors[ACTIVATIONS][:, i].long()).to(x.dtype)
        return torch.cat([x, a.view(len(x), *[1] * (x.dim() - 2), -1).expand(*x.shape[:-1], -1)], dim=-1)

    @staticmethod
    def _pool(xs: list[torch.Tensor]) -> torch.Tensor:
        """Every slot's features pooled over its permutable axes (slots without any pass through)."""
        return torch.cat([set_stats(x.flatten(1, -2)) if x.dim() > 2 else x for x in xs], dim=1)
