"""The architecture description and its three builders (tracing, families, declarative JSON)."""
from .compile import compile_program
from .declarative import parse_declarative
from .describe import describe, describe_module
from .description import CONVERTER_VERSION, ArchitectureDescription, InputSpec, NodeGroup, Op, Program, TensorSpec
from .errors import ArchitectureError
from .hints import Hints

__all__ = ["CONVERTER_VERSION", "ArchitectureDescription", "ArchitectureError", "Hints", "InputSpec", "NodeGroup",
           "Op", "Program", "TensorSpec", "compile_program", "describe", "describe_module", "parse_declarative"]
