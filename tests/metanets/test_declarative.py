"""The declarative JSON describes anything no family recognises; its description behaves like any other."""
import torch
from torch import nn

from metanets import (apply_symmetry, describe, graph_to_state_dict, random_symmetry, rebuild,
                                   to_graph)


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.hidden = nn.Linear(6, 10)
        self.back = nn.Linear(10, 6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.back(torch.relu(self.hidden(h)))
        return self.out(self.norm(h))


SPEC = {
    "inputs": [{"name": "x", "kind": "features", "size": 3}],
    "ops": [
        {"name": "inp", "kind": "linear", "inputs": ["x"], "params": {"weight": "inp.weight", "bias": "inp.bias"}},
        {"name": "hidden", "kind": "linear", "inputs": ["inp"],
         "params": {"weight": "hidden.weight", "bias": "hidden.bias"}},
        {"name": "relu", "kind": "act", "inputs": ["hidden"], "attrs": {"fn": "relu"}},
        {"name": "back", "kind": "linear", "inputs": ["relu"], "params": {"weight": "back.weight", "bias": "back.bias"}},
        {"name": "skip", "kind": "add", "inputs": ["back", "inp"]},
        {"name": "norm", "kind": "layernorm", "inputs": ["skip"], "params": {"weight": "norm.weight",
                                                                             "bias": "norm.bias"}},
        {"name": "out", "kind": "linear", "inputs": ["norm"], "params": {"weight": "out.weight", "bias": "out.bias"}},
    ],
    "outputs": ["out"],
}


def test_declarative_residual_mlp():
    torch.manual_seed(0)
    model = ResidualMLP().double().eval()
    sd = model.state_dict()
    desc = describe(sd, declarative=SPEC)
    x = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(rebuild(desc, sd)(x), ref, atol=1e-12, rtol=0)
        stream = desc.tensors["inp.weight"].axes[0][0]
        assert desc.tensors["back.weight"].axes[0] == [stream] == desc.tensors["norm.weight"].axes[0]
        perms = random_symmetry(desc, torch.Generator().manual_seed(1))
        model.load_state_dict(apply_symmetry(desc, sd, perms))
        torch.testing.assert_close(model(x), ref, atol=1e-12, rtol=0)
    data = to_graph(desc, sd)
    assert all(torch.equal(a, b) for a, b in zip(graph_to_state_dict(desc, data).values(), sd.values()))


def test_declarative_agrees_with_family():
    sd = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict()
    spec = {"inputs": [{"name": "x", "kind": "features", "size": 4}],
            "ops": [{"name": "a", "kind": "linear", "inputs": ["x"], "params": {"weight": "0.weight", "bias": "0.bias"}},
                    {"name": "r", "kind": "act", "inputs": ["a"], "attrs": {"fn": "relu"}},
                    {"name": "b", "kind": "linear", "inputs": ["r"], "params": {"weight": "2.weight", "bias": "2.bias"}}],
            "outputs": ["b"]}
    assert torch.equal(to_graph(describe(sd, declarative=spec), sd).edge_index, to_graph(describe(sd), sd).edge_index)


def test_untraceable_module_falls_back_to_its_family():
    from metanets import describe_module

    from .models import case

    c = case("gpt2")  # Hugging Face models do not trace with plain torch.fx
    desc = describe_module(c.model, c.inputs, hints={"num_heads": 4})
    assert desc.family == "gpt2"


def test_sequential_family_matches_the_trace():
    from metanets import describe_module

    from .models import case

    c = case("cnn_gn")
    sd = c.model.state_dict()
    by_names = describe(sd, {"groupnorm_groups": 2})
    traced = describe_module(c.model, c.inputs)
    assert by_names.family == "sequential" and traced.family == "traced"
    for a, b in ((to_graph(by_names, sd), to_graph(traced, sd)),):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_type, b.edge_type)
    with torch.no_grad():
        torch.testing.assert_close(rebuild(by_names, sd)(*c.inputs), c(), atol=1e-12, rtol=0)
