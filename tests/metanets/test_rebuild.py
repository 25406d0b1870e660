"""Rebuilt modules compute the original function; activations can be captured at named layers."""
import json

import pytest
import torch

from metanets import ArchitectureDescription, capture_activations, rebuild

from .models import SYMMETRY_CASES, case, described


@pytest.mark.parametrize("name", SYMMETRY_CASES)
def test_rebuilt_module_matches_original(name):
    c = case(name)
    desc = ArchitectureDescription.from_json(json.loads(json.dumps(described(name).to_json())))
    module = rebuild(desc, c.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module(*c.inputs), c(), atol=c.atol, rtol=0)


def test_description_json_round_trip():
    desc = described("gpt2")
    assert ArchitectureDescription.from_json(json.dumps(desc.to_json())).to_json() == desc.to_json()


def test_capture_activations_on_rebuilt_and_original():
    c = case("resnet_blocks")
    module = rebuild(described("resnet_blocks"), c.model.state_dict())
    got = capture_activations(module, c.inputs, ["block1.conv1", "fc"])
    ref = capture_activations(c.model, c.inputs, ["block1.conv1", "fc"])
    assert got["block1.conv1"].shape == (2, 8, 8, 8)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-10, rtol=0)
    with pytest.raises(KeyError):
        capture_activations(module, c.inputs, ["no.such.layer"])


def test_rebuilt_module_follows_new_weights():
    c = case("mlp")
    sd = {k: v * 0.5 for k, v in c.model.state_dict().items()}
    module = rebuild(described("mlp"), sd)
    with torch.no_grad():
        torch.testing.assert_close(module(*c.inputs), c(sd), atol=1e-12, rtol=0)
        assert not torch.allclose(module(*c.inputs), c())


def test_bert_encoder_without_head_returns_both_outputs():
    from transformers import BertConfig, BertModel

    from metanets import describe

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=27, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=24, max_position_embeddings=12)).double().eval()
    ids = torch.randint(0, 27, (2, 5))
    desc = describe(model.state_dict(), {"num_heads": 4})
    with torch.no_grad():
        hidden, pooled = rebuild(desc, model.state_dict())(ids)
        ref = model(ids)
    torch.testing.assert_close(hidden, ref.last_hidden_state, atol=1e-10, rtol=0)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-10, rtol=0)
    stream = desc.groups[desc.value_groups[desc.outputs[0]]]
    assert stream.kind == "output" and not stream.permutable, "hidden states are outputs: their order is fixed"
