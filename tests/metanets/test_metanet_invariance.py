"""GMN and UNF outputs are invariant (GMN per-edge head equivariant) under random hidden permutations of the input
checkpoint, in float64, and change under permutations that are not symmetries: input features, output classes,
kernel positions."""
from dataclasses import asdict

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch_geometric.data import Batch

from metanets import apply_symmetry, describe, graph_to_state_dict, random_symmetry, to_graph, unf_spec, unf_tensors
from metanets.models.gmn import GMN
from metanets.models.pooling import READOUTS
from metanets.graph.layout import tensor_activations
from metanets.models.unf import ACTIVATIONS, UNF
from metanets.weightspace import edge_log_rms, rms_normalize
from metanets.zoo import cnn

from .models import case

GRID = (1, 3, 3)


def _cnn_checkpoint(seed=0):
    torch.manual_seed(seed)
    sd = {k: v.double() for k, v in cnn.small_cnn("relu").state_dict().items()}
    return describe(sd, cnn.describe_hints("relu")), sd


def _mlp_checkpoint():
    c = case("mlp")
    sd = {k: v.double() for k, v in c.model.state_dict().items()}
    return describe(sd, c.hints), sd


CHECKPOINTS = {"cnn": _cnn_checkpoint, "mlp": _mlp_checkpoint}


def _random_pool_norm(model):
    """pool_norm on, with running statistics that are not the identity (as after training)."""
    model.pool_norm.running_mean.normal_()
    model.pool_norm.running_var.uniform_(0.5, 2.0)
    return model


def _gmn(readout):
    """The old model with the mean readout; the current defaults with stats (mean + max messages, log-RMS inputs,
    activation features); layer_stats with 3 slots, fewer than the CNN's layers, so the deeper ones share the last."""
    torch.manual_seed(1)
    new = readout != "mean"
    return _random_pool_norm(GMN(out_dim=3, edge_width=9, d=16, layers=2, pool_norm=True, readout=readout,
                                 aggregation="mean_max" if new else "mean", edge_scale=new,
                                 layer_slots=3, activations=new).double().eval())


def _unf(desc, readout, activations=None):
    """With the current defaults (activation channels) unless the readout is the old mean."""
    torch.manual_seed(2)
    return _random_pool_norm(UNF([asdict(e) for e in unf_spec(desc)], out_dim=3, channels=4, layers=2, hidden=16,
                                 pool_norm=True, readout=readout,
                                 activations=readout != "mean" if activations is None else activations).double().eval())


def _gmn_run(model, desc, sd):
    data = to_graph(desc, sd, mode="vector", grid=GRID)
    if model.edge_scale is not None:
        data.edge_scale = edge_log_rms(desc, rms_normalize(desc, sd)[1], data.num_edges).double()
    with torch.no_grad():
        out, emb, edges = model(Batch.from_data_list([data]))
    data.edge_attr = edges
    return out, graph_to_state_dict(desc, data)


def _unf_run(model, desc, sd):
    spec = unf_spec(desc)
    inputs = {k: v[None, ..., None] for k, v in unf_tensors(spec, sd).items()}
    acts = tensor_activations(desc)
    inputs[ACTIVATIONS] = torch.tensor([[acts[e.tensor] for e in spec]])
    with torch.no_grad():
        return model(inputs)[0]


@pytest.fixture(scope="module")
def nets():
    return {(name, r): (make(), _gmn(r)) for name, make in CHECKPOINTS.items() for r in READOUTS}


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_gmn_invariant_and_edge_head_equivariant(nets, name, readout, seed):
    (desc, sd), model = nets[name, readout]
    perms = random_symmetry(desc, torch.Generator().manual_seed(seed))
    permuted = apply_symmetry(desc, sd, perms)
    assert any(not torch.equal(permuted[k], sd[k]) for k in sd), "the symmetry must move something"
    out, edges = _gmn_run(model, desc, sd)
    out_p, edges_p = _gmn_run(model, desc, permuted)
    torch.testing.assert_close(out_p, out, rtol=1e-9, atol=1e-9)
    expected = apply_symmetry(desc, edges, perms)
    for k in edges:
        torch.testing.assert_close(edges_p[k], expected[k], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_unf_invariant(nets, name, readout, seed):
    (desc, sd), _ = nets[name, readout]
    model = _unf(desc, readout)
    permuted = apply_symmetry(desc, sd, random_symmetry(desc, torch.Generator().manual_seed(seed)))
    torch.testing.assert_close(_unf_run(model, desc, permuted), _unf_run(model, desc, sd), rtol=1e-9, atol=1e-9)


def _not_symmetries(name, sd):
    """Permutations that change the function: input features, output classes, kernel positions."""
    out = {}
    last = "4" if name == "mlp" else "8"
    classes = torch.tensor([1, 0, *range(2, sd[f"{last}.weight"].shape[0])])
    out["output classes"] = {**sd, f"{last}.weight": sd[f"{last}.weight"][classes], f"{last}.bias": sd[f"{last}.bias"][classes]}
    if name == "mlp":
        out["input features"] = {**sd, "0.weight": sd["0.weight"][:, torch.tensor([1, 0, 2, 3, 4])]}
    else:
        out["kernel positions"] = {**sd, "2.weight": sd["2.weight"].flip(-1)}
    return out


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_outputs_change_under_non_symmetries(nets, name, readout):
    """A change far above the rounding noise of a true symmetry (untrained nets react weakly, but they react)."""
    (desc, sd), gmn = nets[name, readout]
    unf = _unf(desc, readout)
    symmetric = apply_symmetry(desc, sd, random_symmetry(desc, torch.Generator().manual_seed(0)))
    for net, run in ((gmn, lambda m, s: _gmn_run(m, desc, s)[0]), (unf, lambda m, s: _unf_run(m, desc, s))):
        base = run(net, sd)
        noise = (run(net, symmetric) - base).abs().max()
        for what, changed in _not_symmetries(name, sd).items():
            change = (run(net, changed) - base).abs().max()
            assert change > 1e4 * noise + 1e-11, f"{type(net).__name__} blind to {what}: {change} vs noise {noise}"


def test_models_read_the_activation_only_with_activation_features():
    """The same weights described as a tanh network instead of a relu one: another output with activation
    features, the same output without them (the function differs, the weights do not)."""
    _, sd = _cnn_checkpoint()
    relu, tanh = (describe(sd, cnn.describe_hints(a)) for a in ("relu", "tanh"))
    for activations in (False, True):
        torch.manual_seed(4)
        gmn = _random_pool_norm(GMN(out_dim=2, edge_width=9, d=8, layers=1, pool_norm=True, readout="stats",
                                    activations=activations).double().eval())
        unf = _unf(relu, "stats", activations)
        for run in (lambda d: _gmn_run(gmn, d, sd)[0], lambda d: _unf_run(unf, d, sd)):
            change = (run(tanh) - run(relu)).abs().max()
            assert (change > 1e-6) == activations, (activations, change)


def test_gmn_layer_slots_are_per_graph_in_a_batch():
    """layer_stats ranks layers within each graph: a batch of a CNN and an MLP (other depths, other layer numbers)
    gives each the output it gets alone; the CNN's layers fill the slots in order, the deepest sharing the last."""
    torch.manual_seed(3)
    model = _random_pool_norm(GMN(out_dim=2, edge_width=9, d=8, layers=1, pool_norm=True, readout="layer_stats",
                                  layer_slots=6).double().eval())
    graphs = [to_graph(*make(), mode="vector", grid=GRID) for make in (_cnn_checkpoint, _mlp_checkpoint)]
    with torch.no_grad():
        together = model(Batch.from_data_list(graphs))[0]
        alone = torch.cat([model(Batch.from_data_list([g]))[0] for g in graphs])
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-9)
    layer = graphs[0].x[:, 1]
    rank = torch.unique(layer, return_inverse=True)[1]  # CNN layers 0, 1, 3, 5, 9 -> 0..4
    batch = torch.zeros(len(layer), dtype=torch.long)
    assert torch.equal(model._layer_slot(layer, batch, 1), rank)
    assert torch.equal(_gmn("layer_stats")._layer_slot(layer, batch, 1), rank.clamp(max=2))
