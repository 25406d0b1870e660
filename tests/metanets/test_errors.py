"""Checkpoints, hints and declarative JSON that cannot be understood raise ArchitectureError naming the fault."""
import pytest
import torch
from torch import nn

from metanets import ArchitectureError, describe, describe_module

from .models import case


def _raises(match, *args, **kwargs):
    with pytest.raises(ArchitectureError, match=match) as info:
        describe(*args, **kwargs)
    assert info.value.problems and isinstance(info.value, ValueError)
    return info.value


def test_inconsistent_shapes_name_the_tensor():
    sd = dict(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict())
    sd["2.weight"] = torch.zeros(3, 7)
    _raises(r"tensor '2.weight'.*expects 7 input features", sd)
    sd = dict(case("cnn_bn").model.state_dict())
    sd["1.running_mean"] = torch.zeros(5, dtype=torch.float64)
    _raises(r"1.running_mean", sd, {"global_pool": "flatten"})
    sd = dict(case("gpt2").model.state_dict())
    sd["transformer.h.1.mlp.c_proj.weight"] = torch.zeros(60, 16, dtype=torch.float64)
    _raises(r"transformer.h.1.mlp.c_proj.weight", sd, {"num_heads": 4})


def test_tensor_that_fits_no_group():
    sd = dict(case("resnet_bottleneck").model.state_dict())
    sd["extra.adapter.weight"] = torch.zeros(3, 3)
    err = _raises(r"extra.adapter.weight", sd)
    assert err.problems == ["tensor 'extra.adapter.weight' (3, 3) fits no op of the torchvision_resnet architecture"]


def test_unknown_names_are_refused_listing_the_tensors():
    err = _raises(r"no architecture family", {"encoder.w": torch.zeros(2, 2), "decoder.w": torch.zeros(2, 2)})
    assert any("encoder.w" in p for p in err.problems)


def test_hints_that_contradict_the_weights():
    sd = case("gpt2").model.state_dict()
    _raises(r"num_heads'=5 does not divide the width 16", sd, {"num_heads": 5})
    _raises(r"hint 'num_heads' is required", sd)
    _raises(r"unknown hint 'heads'", sd, {"heads": 4})
    _raises(r"positive integer", sd, {"num_heads": -2})
    _raises(r"does not have the tensor names of family 'timm_vit'", sd, {"num_heads": 4, "family": "timm_vit"})
    _raises(r"activation", sd, {"num_heads": 4, "activation": "swishy"})


def test_tied_weights_that_differ_are_not_tied():
    sd = dict(case("gpt2").model.state_dict())
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    desc = describe(sd, {"num_heads": 4})
    assert desc.tensors["lm_head.weight"].tied_to is None


def test_declarative_that_contradicts_the_weights():
    sd = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict()
    spec = {"inputs": [{"name": "x", "kind": "features", "size": 5}],
            "ops": [{"name": "fc1", "kind": "linear", "inputs": ["x"], "params": {"weight": "0.weight"}}],
            "outputs": ["fc1"]}
    _raises(r"tensor '0.weight'.*expects 4 input features but 'x' has 5", sd, declarative=spec)
    spec["inputs"][0]["size"] = 4
    _raises(r"fits no op", sd, declarative=spec)  # 0.bias, 2.weight and 2.bias are left over
    spec["ops"][0]["kind"] = "lstm"
    _raises(r"kind 'lstm' is not one of", sd, declarative=spec)
    _raises(r"'ops' must be a non-empty list", sd, declarative={"inputs": [], "outputs": []})


def test_untraceable_module_names_the_module():
    class WithLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.rnn = nn.LSTM(3, 3)

        def forward(self, x):
            return self.rnn(self.fc(x))

    with pytest.raises(ArchitectureError, match=r"module 'rnn' of type LSTM"):
        describe_module(WithLSTM(), (torch.randn(2, 3),))


def test_grouped_convolution_is_refused():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with pytest.raises(ArchitectureError, match=r"grouped and depthwise"):
        describe_module(model, (torch.randn(1, 4, 6, 6),))


def test_trace_falls_back_only_when_fx_cannot_follow_the_code():
    class Dynamic(nn.Sequential):
        def forward(self, x):
            for m in self:
                x = m(x) if x.sum() > -1e9 else x  # data-dependent control flow defeats torch.fx
            return x

    model = Dynamic(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert describe_module(model, (torch.randn(2, 3),)).family == "sequential"
