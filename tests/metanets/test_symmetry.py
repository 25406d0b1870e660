"""Symmetries drawn from the description leave the original network's function unchanged; false ones do not."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metanets import apply_symmetry, random_symmetry

from .models import SYMMETRY_CASES, case, described


@pytest.mark.parametrize("name", SYMMETRY_CASES)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1))
def test_random_symmetry_preserves_outputs(name, seed):
    c, desc = case(name), described(name)
    sd = c.model.state_dict()
    perms = random_symmetry(desc, torch.Generator().manual_seed(seed))
    moved = sum(int((p != torch.arange(len(p))).any()) for p in perms.values())
    assert moved > 0, "the symmetry should move something"
    permuted = apply_symmetry(desc, sd, perms)
    assert any(not torch.equal(permuted[k], sd[k]) for k in sd)
    torch.testing.assert_close(c(permuted), c(), atol=c.atol, rtol=0)


def _changed(c, sd):
    return not torch.allclose(c(sd), c(), atol=1e-6, rtol=0)


def test_input_and_output_axes_are_fixed():
    desc = described("mlp")
    kinds = {g.kind: g.permutable for g in desc.groups.values() if g.kind in ("input", "output")}
    assert kinds == {"input": False, "output": False}
    c, sd = case("mlp"), case("mlp").model.state_dict()
    swap = sd.copy()
    swap["0.weight"] = sd["0.weight"][:, [1, 0, 2, 3, 4]]  # permute input features
    assert _changed(c, swap)
    swap = sd.copy()
    swap["4.weight"], swap["4.bias"] = sd["4.weight"][[1, 0, 2]], sd["4.bias"][[1, 0, 2]]  # permute classes
    assert _changed(c, swap)


def test_kernel_positions_are_fixed():
    desc = described("cnn_bn")
    assert desc.tensors["0.weight"].axes[2:] == [["@spatial"], ["@spatial"]]
    c, sd = case("cnn_bn"), case("cnn_bn").model.state_dict()
    flipped = sd.copy()
    flipped["3.weight"] = sd["3.weight"].flip(-1)
    assert _changed(c, flipped)
    # the flattened features keep their spatial order: only whole channels move
    flat = desc.groups[desc.tensors["7.weight"].axes[1][0]]
    assert flat.parent is not None and not flat.permutable


def test_attention_symmetry_respects_heads_and_qk():
    desc = described("gpt2")
    qk = next(g for g in desc.groups.values() if g.name.endswith("attn.qk"))
    heads = desc.groups[qk.parent]
    assert heads.kind == "head" and heads.size == 4
    for seed in range(5):
        p = random_symmetry(desc, torch.Generator().manual_seed(seed))[qk.name].view(4, -1)
        assert ((p // 4) == (p[:, :1] // 4)).all(), "a drawn symmetry moved a dimension to another head"


def _gpt2_qkv_permuted(sd, layer, q_perm, k_perm):
    out = sd.copy()
    w = sd[f"transformer.h.{layer}.attn.c_attn.weight"].clone()
    b = sd[f"transformer.h.{layer}.attn.c_attn.bias"].clone()
    w[:, :16], w[:, 16:32] = w[:, q_perm], w[:, 16 + k_perm]
    b[:16], b[16:32] = b[q_perm], b[16 + k_perm]
    out[f"transformer.h.{layer}.attn.c_attn.weight"], out[f"transformer.h.{layer}.attn.c_attn.bias"] = w, b
    return out


def test_cross_head_and_q_without_k_change_outputs():
    c, sd = case("gpt2"), case("gpt2").model.state_dict()
    within = torch.tensor([1, 0, 2, 3] + list(range(4, 16)))  # swap two dims inside head 0
    assert not _changed(c, _gpt2_qkv_permuted(sd, 0, within, within))  # Q and K together: a symmetry
    assert _changed(c, _gpt2_qkv_permuted(sd, 0, within, torch.arange(16)))  # Q without K
    across = torch.tensor([4, 1, 2, 3, 0] + list(range(5, 16)))  # dim 0 of head 0 <-> dim 0 of head 1
    assert _changed(c, _gpt2_qkv_permuted(sd, 0, across, across))


def test_groupnorm_groups_are_kept():
    desc = described("cnn_gn")
    channels = desc.groups[desc.tensors["0.weight"].axes[0][0]]
    assert channels.parent is not None and desc.groups[channels.parent].size == 2
    c, sd = case("cnn_gn"), case("cnn_gn").model.state_dict()
    across = torch.tensor([4, 1, 2, 3, 0, 5, 6, 7])  # channel 0 (group 0) <-> channel 4 (group 1)
    moved = sd.copy()
    for k in ("0.weight", "0.bias", "1.weight", "1.bias"):
        moved[k] = sd[k][across]
    moved["3.weight"] = sd["3.weight"][:, across]
    assert _changed(c, moved)


def test_rope_queries_and_keys_keep_their_dimensions():
    desc = described("llama")
    qk = next(g for g in desc.groups.values() if g.name.endswith("self_attn.qk"))
    vo = next(g for g in desc.groups.values() if g.name.endswith("self_attn.vo"))
    assert not qk.permutable and vo.permutable and qk.parent == vo.parent
