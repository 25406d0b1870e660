"""UNF basis: valid partitions counted by the Bell formula, each term equivariant, the terms independent."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from metanets.errors import MetanetError
from metanets.models.unf import UNF, BasisTerm, Slot, basis_size, bell, set_partitions, valid_partitions


def test_bell_numbers_and_partitions():
    assert [bell(n) for n in range(8)] == [1, 1, 2, 5, 15, 52, 203, 877]
    for n in range(7):
        parts = set_partitions(list(range(n)))
        assert len(parts) == bell(n)
        assert len({tuple(sorted(tuple(sorted(b)) for b in p)) for p in parts}) == bell(n)


def test_recurrent_weight_has_15_terms():
    slot = Slot.from_entry("W", [4, 4], ["a", "a"])
    assert basis_size([slot]) == 15 == len(valid_partitions(("a", "a"), ("a", "a")))


symbols = st.lists(st.sampled_from(["a", "b", "c", None]), min_size=0, max_size=3)


@settings(max_examples=40, deadline=None)
@given(out_syms=symbols, in_syms=symbols)
def test_partition_count_matches_bell_formula(out_syms, in_syms):
    o = tuple(s for s in out_syms if s)
    i = tuple(s for s in in_syms if s)
    expected = math.prod(bell(o.count(s) + i.count(s)) for s in set(o) | set(i))
    assert len(valid_partitions(o, i)) == expected
    lo, mi = Slot.from_entry("l", [3] * len(out_syms), out_syms), Slot.from_entry("m", [3] * len(in_syms), in_syms)
    pair = lambda a, b: len(valid_partitions(a.symbols, b.symbols))  # noqa: E731
    assert basis_size([lo, mi]) == pair(lo, lo) + pair(mi, mi) + pair(lo, mi) + pair(mi, lo)


@pytest.mark.parametrize("out_syms,in_syms", [(("a", "a"), ("a", "a")), (("a", "b"), ("b",)), (("a",), ("a", "a"))])
def test_terms_are_equivariant_and_independent(out_syms, in_syms):
    n = 4
    lo, mi = Slot.from_entry("l", [n] * len(out_syms), list(out_syms)), Slot.from_entry("m", [n] * len(in_syms), list(in_syms))
    terms = [BasisTerm(p, lo, mi) for p in valid_partitions(lo.symbols, mi.symbols)]
    one = torch.ones(1, 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    perms = {s: torch.randperm(n, generator=g) for s in set(out_syms) | set(in_syms)}

    def permute(x, syms):
        for axis, s in enumerate(syms):
            x = x.index_select(axis + 1, perms[s])
        return x

    x = torch.randn(2, *[n] * len(in_syms), 1, dtype=torch.float64, generator=g)
    for t in terms:
        torch.testing.assert_close(t(permute(x, in_syms), one), permute(t(x, one), out_syms))
    basis = torch.eye(n ** len(in_syms), dtype=torch.float64).reshape(-1, *[n] * len(in_syms), 1)
    maps = torch.stack([t(basis, one).reshape(-1) for t in terms])
    assert torch.linalg.matrix_rank(maps) == len(terms), "every basis term adds a new equivariant map"


def test_basis_guard():
    entries = [{"key": f"w{i}", "shape": [4, 4, 4], "symbols": ["a", "a", "a"]} for i in range(3)]
    with pytest.raises(MetanetError, match="basis too large"):
        UNF(entries, out_dim=1, max_terms=1000)
