"""Public API of the architecture description and everything generated from it."""
from ..graph.build import expected_edges, to_graph
from ..graph.inverse import graph_to_state_dict
from ..runnable import RebuiltNetwork, capture_activations, rebuild
from ..symmetry import apply_symmetry, random_symmetry
from ..unf_spec import UNFEntry, unf_spec, unf_tensors
from .compile import compile_program
from .declarative import parse_declarative
from .describe import describe, describe_module
from .description import CONVERTER_VERSION, ArchitectureDescription, InputSpec, NodeGroup, Op, Program, TensorSpec
from .errors import ArchitectureError
from .hints import Hints

__all__ = [
    "CONVERTER_VERSION", "ArchitectureDescription", "ArchitectureError", "Hints", "InputSpec", "NodeGroup", "Op",
    "Program", "RebuiltNetwork", "TensorSpec", "UNFEntry", "apply_symmetry", "capture_activations",
    "compile_program", "describe", "describe_module", "expected_edges", "graph_to_state_dict",
    "parse_declarative", "random_symmetry", "rebuild", "to_graph", "unf_spec", "unf_tensors",
]
