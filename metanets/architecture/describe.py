"""The entry point: one description from a live module, a recognised family, or a declarative JSON."""
from __future__ import annotations

import torch
from torch import nn

from .compile import compile_program
from .declarative import parse_declarative
from .description import ArchitectureDescription
from .errors import ArchitectureError
from .families import recognise
from .hints import Hints


def describe(state_dict: dict[str, torch.Tensor], hints: dict | Hints | None = None,
             declarative: dict | None = None, module: nn.Module | None = None,
             example_inputs: tuple | None = None) -> ArchitectureDescription:
    """Describe a checkpoint, trying in order: a ``torch.fx`` trace of ``module``, the families, ``declarative``.

    A declarative JSON given alongside a recognised family is still checked against the weights.
    Raises ArchitectureError naming every tensor, hint or op that could not be understood.
    """
    hints = Hints.parse(hints)
    problems: list[str] = []
    if module is not None:
        from .trace import UnsupportedModule, trace_program

        try:
            return compile_program(trace_program(module, example_inputs), state_dict)
        except UnsupportedModule:  # a layer we refuse: names and shapes would only misdescribe it
            raise
        except ArchitectureError as exc:  # fx could not follow the code: fall back to names and shapes
            problems += [f"tracing: {p}" for p in exc.problems]
    checked = compile_program(parse_declarative(declarative), state_dict) if declarative is not None else None
    program = recognise(state_dict, hints)
    if program is not None:
        return compile_program(program, state_dict)
    if checked is not None:
        return checked
    keys = list(state_dict)
    raise ArchitectureError(problems + ["no architecture family recognises these tensor names and no declarative "
                                        "architecture was given"]
                            + [f"tensor {k!r} was not placed" for k in keys[:50]]
                            + ([f"... and {len(keys) - 50} more tensors"] if len(keys) > 50 else []))


def describe_module(module: nn.Module, example_inputs: tuple | None = None,
                    hints: dict | Hints | None = None) -> ArchitectureDescription:
    """Describe a live module by tracing it, else by its parameter names (its own state dict gives the weights)."""
    return describe(module.state_dict(), hints, module=module, example_inputs=example_inputs)
