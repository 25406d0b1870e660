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


@pytest.mark.parametrize("name, attention, projection", [("gpt2", "h.0.attn", "transformer.h.0.attn.c_proj"),
                                                          ("llama_gqa", "layers.0.self_attn",
                                                           "model.layers.0.self_attn.o_proj"),
                                                          ("vit", "blocks.1.attn", "blocks.1.attn.proj")])
def test_capture_attention_heads_is_the_output_projection_input(name, attention, projection):
    from metanets.runnable import HEADS

    c = case(name)
    module = rebuild(described(name), c.model.state_dict())
    got = capture_activations(module, c.inputs, [attention + HEADS])[attention + HEADS]
    seen = {}
    hook = c.model.get_submodule(projection).register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    try:
        c()
    finally:
        hook.remove()
    torch.testing.assert_close(got, seen["x"], atol=1e-10, rtol=0)


def test_capture_attention_heads_of_multihead_attention_is_the_explicit_concat():
    from metanets.runnable import HEADS

    c = case("tiny_lm")
    model, (ids,) = c.model, c.inputs
    got = capture_activations(rebuild(described("tiny_lm"), model.state_dict()), c.inputs,
                              ["blocks.0.attn" + HEADS])["blocks.0.attn" + HEADS]
    attn, width, heads = model.blocks[0].attn, 16, 4
    with torch.no_grad():
        h = model.blocks[0].ln1(model.emb(ids) + model.pos)
        q, k, v = (torch.nn.functional.linear(h, w, b) for w, b in zip(attn.in_proj_weight.chunk(3),
                                                                        attn.in_proj_bias.chunk(3)))
        split = [z.reshape(*z.shape[:2], heads, width // heads) for z in (q, k, v)]
        concat = torch.cat([torch.softmax(split[0][:, :, i] @ split[1][:, :, i].transpose(1, 2) / 2.0, -1)
                            @ split[2][:, :, i] for i in range(heads)], dim=-1)
        torch.testing.assert_close(attn.out_proj(concat), attn(h, h, h, need_weights=False)[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(got, concat, atol=1e-10, rtol=0)
    with pytest.raises(KeyError):
        capture_activations(rebuild(described("tiny_lm"), model.state_dict()), c.inputs, ["emb" + HEADS])
