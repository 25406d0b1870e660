"""Graph Metanetwork (Lim et al. 2024) over the parameter graph of ``metanets.to_graph`` (vector mode).

Edges carry weights (a conv kernel per channel pair), nodes are neurons and bias / norm nodes. Each layer updates
edges from their end nodes, then nodes from the mean (``aggregation="mean_max"``: and the max) of messages along
in-edges and along out-edges (pre-norm
residual blocks). Readout (invariant): mean and max over nodes plus mean over edges of the last block, or with
``readout="stats"`` mean, std, max and min over nodes and over edges after the encoder and every block (jumping
knowledge); ``readout="layer_stats"`` takes the same statistics per layer (nodes by their layer, edges by
their target's), as UNF and StatNN see each tensor apart. A per-edge linear head gives one output per weight
(equivariant), which ``graph_to_state_dict`` maps back to a state dict. With ``activations`` a node's features
also embed the function applied to its value (``data.node_act``: relu, tanh, ...), which weights alone do not tell.
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import MessagePassing, global_max_pool, global_mean_pool

from ..errors import MetanetError
from ..graph.types import ACTIVATION_TYPES, EDGE_TYPES, NODE_TYPES
from .pooling import AGGREGATIONS, READOUTS, STAT_COUNT, segment_stats


def mlp(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.SiLU(), nn.Linear(d, d))


class EdgeFunction(nn.Module):
    """phi(v_i, v_j, e_ij) = W2 silu(A v_i + B v_j + C e_ij): the first layer is applied to nodes before gathering,
    which is the same function as an MLP on the concatenation at a fraction of the cost (nodes << edges)."""

    def __init__(self, d: int):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.w2 = nn.Linear(d, d)

    def forward(self, v_i, v_j, e):
        return self.w2(nn.functional.silu(v_i + v_j + self.c(e)))


class Messages(MessagePassing):
    """m_i = mean (and with ``aggregation="mean_max"`` also max) over edges (j -> i) of phi(v_i, v_j, e_ji)."""

    def __init__(self, d: int, aggregation: str = "mean"):
        super().__init__(aggr=["mean", "max"] if aggregation == "mean_max" else "mean")
        self.phi = EdgeFunction(d)

    def forward(self, v, edge_index, e):
        return self.propagate(edge_index, a=self.phi.a(v), b=self.phi.b(v), e=e)

    def message(self, a_i, b_j, e):
        return self.phi(a_i, b_j, e)


class GMNBlock(nn.Module):
    """e_ij += phi_e(v_i, v_j, e_ij); v_i += phi_v(v_i, m_in_i, m_out_i), each on layer-normed inputs."""

    def __init__(self, d: int, aggregation: str = "mean"):
        super().__init__()
        self.norm_v, self.norm_e = nn.LayerNorm(d), nn.LayerNorm(d)
        m = d * (2 if aggregation == "mean_max" else 1)  # width of one direction's aggregated messages
        self.phi_e, self.phi_v = EdgeFunction(d), mlp(d + 2 * m, d)
        self.incoming, self.outgoing = Messages(d, aggregation), Messages(d, aggregation)

    def forward(self, v, edge_index, e):
        h = self.norm_v(v)
        src, dst = edge_index
        e = e + self.phi_e(self.phi_e.a(h)[src], self.phi_e.b(h)[dst], self.norm_e(e))
        he = self.norm_e(e)
        m_in = self.incoming(h, edge_index, he)
        m_out = self.outgoing(h, edge_index.flip(0), he)
        return v + self.phi_v(torch.cat([h, m_in, m_out], dim=-1)), e


class GMN(nn.Module):
    """Type embeddings, ``layers`` GMN blocks, an invariant readout and an equivariant per-edge head."""

    def __init__(self, out_dim: int, edge_width: int, d: int = 64, layers: int = 4, max_layer: int = 64,
                 pool_norm: bool = False, readout: str = "mean", edge_scale: bool = False,
                 aggregation: str = "mean", layer_slots: int = 1, activations: bool = False):
        super().__init__()
        if readout not in READOUTS:
            raise MetanetError(f"unknown readout {readout!r} (known: {list(READOUTS)})")
        if aggregation not in AGGREGATIONS:
            raise MetanetError(f"unknown aggregation {aggregation!r} (known: {list(AGGREGATIONS)})")
        self.max_layer, self.readout_kind = max_layer, readout
        self.layer_slots = layer_slots if readout == "layer_stats" else 1  # deeper layers pool into the last slot
        self.node_type, self.edge_type = nn.Embedding(len(NODE_TYPES), d), nn.Embedding(len(EDGE_TYPES), d)
        self.layer = nn.Embedding(max_layer, d)
        self.activation = nn.Embedding(len(ACTIVATION_TYPES), d) if activations else None
        self.index_freq = nn.Linear(1, d)  # sin features of an input/output neuron's fixed index
        self.permutable = nn.Parameter(torch.zeros(d))
        self.edge_value, self.edge_ksize = nn.Linear(edge_width, d), nn.Linear(3, d)
        self.edge_scale = nn.Linear(1, d) if edge_scale else None  # data.edge_scale: the log RMS of the edge's tensor
        self.blocks = nn.ModuleList(GMNBlock(d, aggregation) for _ in range(layers))
        self.norm_v, self.norm_e = nn.LayerNorm(d), nn.LayerNorm(d)
        pooled = 3 * d if readout == "mean" else 2 * STAT_COUNT * d * (layers + 1) * self.layer_slots
        self.pool_norm = nn.BatchNorm1d(pooled) if pool_norm else nn.Identity()  # see UNF: standardise over graphs
        self.readout = mlp(pooled, d)
        self.out = nn.Linear(d, out_dim)
        self.edge_head = nn.Linear(d, edge_width)
        for emb in (self.node_type, self.edge_type, self.layer, self.activation):  # small: weights not drowned out
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.1)

    def encode(self, data):
        kind, layer, index = data.x.unbind(1)
        fixed = index >= 0
        idx = torch.where(fixed[:, None], torch.sin(self.index_freq(index[:, None].to(self.permutable.dtype))),
                          self.permutable)
        v = self.node_type(kind) + self.layer(layer.clamp(0, self.max_layer - 1)) + idx
        if self.activation is not None:
            v = v + self.activation(data.node_act.long())
        e = (self.edge_value(data.edge_attr.to(self.permutable.dtype)) + self.edge_type(data.edge_type.long())
             + self.edge_ksize(data.edge_ksize.to(self.permutable.dtype)))
        if self.edge_scale is not None:
            e = e + self.edge_scale(data.edge_scale.to(self.permutable.dtype))
        return v, e

    def forward(self, data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(outputs (graphs, out_dim), embeddings (graphs, d), per-edge outputs (edges, edge_width))."""
        v, e = self.encode(data)
        batch = data.batch if data.batch is not None else torch.zeros(len(v), dtype=torch.long, device=v.device)
        edge_batch, graphs = batch[data.edge_index[0]], int(batch.max()) + 1 if len(batch) else 0
        node_set = self._layer_slot(data.x[:, 1], batch, graphs) + batch * self.layer_slots
        edge_set, sets = node_set[data.edge_index[1]], graphs * self.layer_slots

        def stats(v, e):
            return [segment_stats(x, s, sets).view(graphs, -1) for x, s in ((v, node_set), (e, edge_set))]
        pools = stats(v, e) if self.readout_kind != "mean" else []
        for i, block in enumerate(self.blocks):
            v, e = block(v, data.edge_index, e)
            if i == len(self.blocks) - 1:
                v, e = self.norm_v(v), self.norm_e(e)
            if self.readout_kind != "mean":
                pools += stats(v, e)
        if self.readout_kind == "mean":
            pools = [global_mean_pool(v, batch), global_max_pool(v, batch), global_mean_pool(e, edge_batch)]
        emb = self.readout(self.pool_norm(torch.cat(pools, 1)))
        return self.out(emb), emb, self.edge_head(e)

    def _layer_slot(self, layer, batch, graphs):
        """Each node's layer as its rank among its graph's distinct layers (0: inputs), capped at the last slot;
        all 0 with one slot. Ranks, not raw layer numbers, so ops without nodes (activations) leave no gaps."""
        if self.layer_slots == 1:
            return torch.zeros_like(batch)
        from torch_geometric.utils import scatter

        _, rank = torch.unique(batch * self.max_layer + layer.clamp(0, self.max_layer - 1), return_inverse=True)
        first = scatter(rank, batch, 0, dim_size=graphs, reduce="min")
        return (rank - first[batch]).clamp(max=self.layer_slots - 1)
