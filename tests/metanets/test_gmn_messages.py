"""GMN message aggregation agrees with a per-node loop over its in-edges (mean, and mean + max)."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metanets.models.gmn import Messages


def _reference(layer, v, edge_index, e, aggregation):
    """Slow path: for every node, phi over its in-edges, then mean (and max); zeros for a node with none."""
    phi = layer.phi(layer.phi.a(v)[edge_index[1]], layer.phi.b(v)[edge_index[0]], e)
    rows = []
    for i in range(v.shape[0]):
        mine = phi[edge_index[1] == i]
        if len(mine) == 0:
            rows.append(torch.zeros(phi.shape[1] * (2 if aggregation == "mean_max" else 1), dtype=v.dtype))
            continue
        parts = [mine.mean(0)] + ([mine.max(0).values] if aggregation == "mean_max" else [])
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@settings(max_examples=25, deadline=None)
@given(nodes=st.integers(1, 7), edges=st.integers(0, 20), seed=st.integers(0, 2**16),
       aggregation=st.sampled_from(["mean", "mean_max"]))
def test_messages_match_per_node_reference(nodes, edges, seed, aggregation):
    g = torch.Generator().manual_seed(seed)
    d = 4
    torch.manual_seed(seed)
    layer = Messages(d, aggregation).double()
    v = torch.randn(nodes, d, generator=g, dtype=torch.float64)
    edge_index = torch.randint(0, nodes, (2, edges), generator=g)
    e = torch.randn(edges, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = layer(v, edge_index, e)
        ref = _reference(layer, v, edge_index, e, aggregation)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
