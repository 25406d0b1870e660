"""Metanetworks: GMN (parameter-graph message passing), UNF (spec-generated equivariant layers), StatNN."""
