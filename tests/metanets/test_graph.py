"""Parameter graph: exact inverse, edge counts, structure, vector mode and batching of different architectures."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from torch_geometric.data import Batch

from metanets import describe, expected_edges, graph_to_state_dict, to_graph
from metanets.graph.types import ACTIVATION, EDGE, NODE

from .models import GRAPH_CASES, case, described


def _unique_float_params(sd):
    seen, n = set(), 0
    for t in sd.values():
        if t.is_floating_point() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            n += t.numel()
    return n


def _assert_same_state_dict(a, b):
    assert list(a) == list(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def _is_dag(edge_index, num_nodes):
    alive = torch.ones(num_nodes, dtype=torch.bool)
    while alive.any():
        keep = alive[edge_index[0]] & alive[edge_index[1]]
        indeg = torch.zeros(num_nodes, dtype=torch.long).index_add_(0, edge_index[1, keep], torch.ones(
            int(keep.sum()), dtype=torch.long))
        sources = alive & (indeg == 0)
        if not sources.any():
            return False
        alive &= ~sources
    return True


@pytest.mark.parametrize("name", GRAPH_CASES)
@pytest.mark.parametrize("mode", ["scalar", "vector"])
def test_round_trip_is_bit_exact(name, mode):
    sd = case(name).model.state_dict()
    desc = described(name)
    data = to_graph(desc, sd, mode=mode)
    _assert_same_state_dict(graph_to_state_dict(desc, data), sd)


@pytest.mark.parametrize("name", GRAPH_CASES)
def test_structure(name):
    sd = case(name).model.state_dict()
    desc = described(name)
    data = to_graph(desc, sd)
    counts = expected_edges(desc)
    assert counts["parameters"] == sum(p.numel() for p in case(name).model.parameters())
    assert counts["parameters"] + counts["running_stats"] == _unique_float_params(sd)
    assert data.num_edges == sum(counts.values())
    assert data.edge_index.max() < data.num_nodes
    used = torch.zeros(data.num_nodes, dtype=torch.bool)
    used[data.edge_index.reshape(-1)] = True
    assert used.all(), "every node lies on some edge"
    assert _is_dag(data.edge_index, data.num_nodes)
    assert data.x.shape == (data.num_nodes, 3) and data.edge_pos.shape == (data.num_edges, 3)


def test_hand_checked_mlp_edges():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    desc = describe(model.state_dict())
    data = to_graph(desc, model.state_dict())
    src = [0, 1, 0, 1, 0, 1, 5, 5, 5, 2, 3, 4, 7]
    dst = [2, 2, 3, 3, 4, 4, 2, 3, 4, 6, 6, 6, 6]
    assert data.edge_index.tolist() == [src, dst]
    assert data.edge_type.tolist() == [EDGE["linear"]] * 6 + [EDGE["bias"]] * 3 + [EDGE["linear"]] * 3 + [
        EDGE["bias"]]
    w0, b0, w1, b1 = (model.state_dict()[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    assert torch.equal(data.edge_attr[:, 0], torch.cat((w0.reshape(-1), b0, w1.reshape(-1), b1)))
    types = [NODE[t] for t in ("input", "input", "hidden", "hidden", "hidden", "bias", "output", "bias")]
    assert data.x[:, 0].tolist() == types
    assert data.x[:, 2].tolist() == [0, 1, -1, -1, -1, 0, 0, 0], "inputs and outputs carry their index"


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_hand_checked_mlp_activations(activation):
    """The hidden nodes record the function the hints give; inputs, biases and outputs record none."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    data = to_graph(describe(model.state_dict(), {"activation": activation}), model.state_dict())
    none, act = ACTIVATION["none"], ACTIVATION[activation]
    assert data.node_act.tolist() == [none, none, act, act, act, none, none, none]


@pytest.mark.parametrize("name, fn, count", [("mlp", "tanh", 7 + 6), ("gpt2", "gelu_tanh", 2 * 4 * 16),
                                             ("llama", "silu", 2 * 24), ("cnn_gn", "relu", 8 + 6),
                                             ("resnet_blocks", "relu", None)])
def test_nodes_record_their_activation(name, fn, count):
    """Every activation of the program marks the nodes of its input value, and nothing else is marked."""
    data = to_graph(described(name), case(name).model.state_dict())
    assert data.node_act.shape == (data.num_nodes,)
    assert set(data.node_act.unique().tolist()) == {ACTIVATION["none"], ACTIVATION[fn]}
    marked = data.x[data.node_act == ACTIVATION[fn], 0]
    assert (marked == NODE["hidden"]).all(), "only neurons carry an activation"
    if count is not None:
        assert len(marked) == count


def test_tensor_activations_are_their_targets_function():
    """Per tensor, the function applied to the nodes it feeds: the layer's activation, none for the last layer."""
    from metanets.graph.layout import tensor_activations

    mlp = tensor_activations(described("mlp"))
    assert mlp == {k: ACTIVATION["tanh"] if k[0] in "02" else ACTIVATION["none"] for k in case("mlp").model.state_dict()}
    gpt2 = tensor_activations(described("gpt2"))
    assert gpt2["transformer.h.1.mlp.c_fc.weight"] == gpt2["transformer.h.1.mlp.c_fc.bias"] == ACTIVATION["gelu_tanh"]
    assert gpt2["transformer.h.1.mlp.c_proj.weight"] == gpt2["transformer.h.1.attn.c_attn.weight"] == ACTIVATION["none"]
    bn = tensor_activations(described("cnn_bn"))  # conv -> batchnorm -> relu: the norm's tensors feed relu nodes too
    assert bn["0.weight"] == bn["1.weight"] == bn["1.running_mean"] == ACTIVATION["relu"]


def test_extra_edges_counted_independently():
    gpt2 = expected_edges(described("gpt2"))
    assert gpt2["residual"] == 2 * 2 * 16 and gpt2["head"] == 2 * (16 + 16)
    assert expected_edges(described("cnn_bn"))["flatten"] == 5 * 4 * 4
    assert expected_edges(described("cnn_gn"))["norm_group"] == 8
    assert expected_edges(described("resnet_blocks"))["residual"] == 8 + 12
    assert expected_edges(described("llama"))["product"] == 2 * 24


def test_packed_qkv_and_transposed_conv1d_edges():
    sd = case("gpt2").model.state_dict()
    desc = described("gpt2")
    data = to_graph(desc, sd)
    types = data.edge_type.tolist()
    for t in ("q", "k", "v", "o", "tied_embedding", "position", "residual", "head", "norm_weight"):
        assert EDGE[t] in types, t
    w = sd["transformer.h.0.attn.c_attn.weight"]  # (in, 3 * out) Conv1D layout
    mask = data.edge_type == EDGE["q"]
    q_edges = mask.nonzero()[: w.shape[0] * 16, 0]
    # the first q edges are element (0, 0..15), (1, 0..15), ... of c_attn[:, :16]
    assert torch.equal(data.edge_attr[q_edges[:16], 0], w[0, :16])
    assert (data.edge_index[0, q_edges[:16]] == data.edge_index[0, q_edges[0]]).all()
    assert torch.equal(data.edge_type[q_edges[:16]], torch.full((16,), EDGE["q"], dtype=torch.int32))
    k_first = (data.edge_type == EDGE["k"]).nonzero()[0, 0]
    assert data.edge_index[1, k_first] == data.edge_index[1, q_edges[0]], "Q and K write into the same nodes"
    assert data.edge_attr[k_first, 0] == w[0, 16]


def test_batchnorm_statistics_are_kept():
    sd = case("cnn_bn").model.state_dict()
    data = to_graph(described("cnn_bn"), sd)
    assert torch.equal(data.edge_attr[data.edge_type == EDGE["running_mean"], 0],
                       torch.cat((sd["1.running_mean"], sd["4.running_mean"])))
    assert torch.equal(data.int_buffers, torch.stack((sd["1.num_batches_tracked"], sd["4.num_batches_tracked"])))


def test_vector_mode_edges_per_channel_pair():
    sd = case("resnet_blocks").model.state_dict()
    desc = described("resnet_blocks")
    data = to_graph(desc, sd, mode="vector")
    conv = sum(t.numel() for k, t in sd.items() if t.dim() == 4)
    pairs = sum(t.shape[0] * t.shape[1] for k, t in sd.items() if t.dim() == 4)
    assert data.num_edges == to_graph(desc, sd).num_edges - conv + pairs
    assert data.edge_attr.shape[1] == 9
    first = sd["conv.weight"]
    assert torch.equal(data.edge_attr[: first.shape[0] * first.shape[1]].view(*first.shape), first)
    one_by_one = to_graph(desc, sd, mode="vector", grid=(5, 5))
    assert one_by_one.edge_attr.shape[1] == 25
    _assert_same_state_dict(graph_to_state_dict(desc, one_by_one), sd)


@pytest.mark.parametrize("mode", ["scalar", "vector"])
def test_batches_of_different_architectures(mode):
    names = ["mlp", "cnn_bn", "gpt2", "resnet_blocks"]
    graphs = [to_graph(described(n), case(n).model.state_dict(), mode=mode,
                       grid=(3, 3) if mode == "vector" else None) for n in names]
    batch = Batch.from_data_list(graphs)
    assert batch.num_graphs == len(names) and batch.num_edges == sum(g.num_edges for g in graphs)
    for i, (n, g) in enumerate(zip(names, graphs)):
        part = batch.get_example(i)
        for key in ("x", "edge_index", "edge_attr", "edge_type", "int_buffers"):
            assert torch.equal(part[key], g[key]), (n, key)
        _assert_same_state_dict(graph_to_state_dict(described(n), part), case(n).model.state_dict())


def test_legacy_gpt2_mask_buffers_are_kept():
    c = case("gpt2")
    sd = dict(c.model.state_dict())
    for i in range(2):  # what older transformers versions stored in GPT-2 checkpoints
        sd[f"transformer.h.{i}.attn.bias"] = torch.ones(12, 12, dtype=torch.bool).tril().view(1, 1, 12, 12)
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    desc = describe(sd, {"num_heads": 4})
    assert desc.tensors["transformer.h.0.attn.bias"].buffer
    data = to_graph(desc, sd)
    assert data.num_edges == to_graph(described("gpt2"), c.model.state_dict()).num_edges
    _assert_same_state_dict(graph_to_state_dict(desc, data), sd)


def test_bert_stored_id_buffers_are_kept():
    c = case("bert")
    sd = dict(c.model.state_dict())
    sd["bert.embeddings.position_ids"] = torch.arange(12).view(1, 12)
    sd["bert.embeddings.token_type_ids"] = torch.zeros(1, 12, dtype=torch.long)
    desc = describe(sd, {"num_heads": 4})
    _assert_same_state_dict(graph_to_state_dict(desc, to_graph(desc, sd)), sd)


@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=5),
       dtypes=st.lists(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]), min_size=1,
                       max_size=3),
       seed=st.integers(0, 1000))
def test_round_trip_random_mlps_and_mixed_dtypes(widths, dtypes, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        sd[f"{2 * i}.weight"] = torch.randn(b, a, generator=g).to(dtypes[i % len(dtypes)])
        sd[f"{2 * i}.bias"] = torch.randn(b, generator=g).to(dtypes[(i + 1) % len(dtypes)])
    desc = describe(sd)
    data = to_graph(desc, sd)
    assert data.num_edges == sum(t.numel() for t in sd.values())
    _assert_same_state_dict(graph_to_state_dict(desc, data), sd)
