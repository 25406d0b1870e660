"""UNF spec: one symbol per axis; spatial and head axes are never permuted; spec symmetries are true symmetries."""
import pytest
import torch

from metanets import apply_symmetry, random_symmetry, unf_spec, unf_tensors

from .models import case, described


def test_mlp_spec():
    spec = {e.key: e.symbols for e in unf_spec(described("mlp"))}
    assert spec == {"0.weight": ["0", None], "0.bias": ["0"], "2.weight": ["2", "0"], "2.bias": ["2"],
                    "4.weight": [None, "2"], "4.bias": [None]}


def test_conv_spatial_axes_have_no_symbol():
    spec = {e.key: e.symbols for e in unf_spec(described("cnn_bn"))}
    assert spec["3.weight"] == ["3", "0", None, None]
    assert spec["7.weight"] == [None, "3", None]  # the flattened axis splits into (channels, positions)


def test_packed_qkv_is_split_with_head_axes_fixed():
    entries = {e.key: e for e in unf_spec(described("gpt2"))}
    q, k, v = (entries[f"transformer.h.0.attn.c_attn.weight[{i}]"] for i in range(3))
    assert q.shape == [16, 4, 4] and q.symbols[1] is None
    assert q.symbols == k.symbols and q.symbols[2] != v.symbols[2]
    assert "lm_head.weight" not in entries, "tied weights appear once"
    views = unf_tensors(list(entries.values()), case("gpt2").model.state_dict())
    w = case("gpt2").model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    assert torch.equal(views[v.key].reshape(16, 16), w[:, 32:])


def _apply_spec_symmetry(spec, sd, seed):
    """Permute every symbol's axes in the spec's views, independently of metanets.symmetry."""
    g = torch.Generator().manual_seed(seed)
    sizes = {s: n for e in spec for s, n in zip(e.symbols, e.shape) if s is not None}
    perms = {s: torch.randperm(n, generator=g) for s, n in sizes.items()}
    out = {k: v.clone() for k, v in sd.items()}
    for e in spec:
        x = sd[e.tensor]
        for axis, (a, b) in enumerate(e.slices):
            x = x.narrow(axis, a, b - a)
        y = x.reshape(e.shape)
        for axis, s in enumerate(e.symbols):
            if s is not None:
                y = y.index_select(axis, perms[s])
        target = out[e.tensor]
        for axis, (a, b) in enumerate(e.slices):
            target = target.narrow(axis, a, b - a)
        target.copy_(y.reshape(target.shape))
    return out


@pytest.mark.parametrize("name", ["mlp", "cnn_gn", "resnet_blocks", "tiny_lm", "gpt2", "vit"])
def test_spec_symmetries_preserve_outputs(name):
    c = case(name)
    spec = unf_spec(described(name))
    sd = c.model.state_dict()
    permuted = _apply_spec_symmetry(spec, sd, seed=3)
    for alias, t in described(name).tensors.items():  # tied aliases follow their target
        if t.tied_to:
            permuted[alias] = permuted[t.tied_to]
    assert any(not torch.equal(permuted[k], sd[k]) for k in sd)
    torch.testing.assert_close(c(permuted), c(), atol=c.atol, rtol=0)


def test_spec_agrees_with_description_symmetry_without_heads():
    desc = described("resnet_blocks")
    sd = case("resnet_blocks").model.state_dict()
    perms = random_symmetry(desc, torch.Generator().manual_seed(0))
    spec = unf_spec(desc)
    by_symbol = unf_tensors(spec, apply_symmetry(desc, sd, perms))
    original = unf_tensors(spec, sd)
    for e in spec:
        y = original[e.key]
        for axis, s in enumerate(e.symbols):
            if s is not None:
                y = y.index_select(axis, perms[s])
        assert torch.equal(y, by_symbol[e.key]), e.key
