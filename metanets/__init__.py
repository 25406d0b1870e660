"""Weight-space science core: describe a checkpoint once, then generate graphs, specs, symmetries and modules."""
from .architecture import (CONVERTER_VERSION, ArchitectureDescription, ArchitectureError, Hints, InputSpec, NodeGroup,
                           Op, Program, TensorSpec, compile_program, describe, describe_module, parse_declarative)
from .graph.build import expected_edges, to_graph
from .graph.inverse import graph_to_state_dict
from .runnable import RebuiltNetwork, capture_activations, rebuild
from .symmetry import apply_symmetry, random_symmetry
from .unf_spec import UNFEntry, unf_spec, unf_tensors

__all__ = [
    "CONVERTER_VERSION", "ArchitectureDescription", "ArchitectureError", "Hints", "InputSpec", "NodeGroup", "Op",
    "Program", "RebuiltNetwork", "TensorSpec", "UNFEntry", "apply_symmetry", "capture_activations",
    "compile_program", "describe", "describe_module", "expected_edges", "graph_to_state_dict",
    "parse_declarative", "random_symmetry", "rebuild", "to_graph", "unf_spec", "unf_tensors",
]
