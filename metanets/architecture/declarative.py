"""The declarative architecture JSON: the op program written out by hand, for anything no family recognises.

Format (all names are state-dict keys or value names)::

    {"inputs": [{"name": "x", "kind": "features", "size": 4}],
     "ops": [{"name": "fc1", "kind": "linear", "inputs": ["x"], "params": {"weight": "0.weight", "bias": "0.bias"}},
             {"name": "act", "kind": "act", "inputs": ["fc1"], "attrs": {"fn": "relu"}},
             {"name": "fc2", "kind": "linear", "inputs": ["act"], "params": {"weight": "2.weight"}}],
     "outputs": ["fc2"],
     "tied": {"lm_head.weight": "wte.weight"}}

An op's output value is named after the op unless ``"output"`` says otherwise. Op kinds and their parameter
roles are listed in ``metanets/README.md``.
"""
from __future__ import annotations

from .compile import RULES
from .description import InputSpec, Op, Program
from .errors import ArchitectureError

_INPUT_KINDS = ("features", "image", "tokens")


def parse_declarative(spec: dict) -> Program:
    """Validate the JSON's structure and turn it into a Program (shapes are checked later, against the weights)."""
    if not isinstance(spec, dict):
        raise ArchitectureError("declarative architecture must be a JSON object")
    problems = [f"declarative architecture: unknown key {k!r}" for k in spec
                if k not in ("inputs", "ops", "outputs", "tied")]
    for key in ("inputs", "ops", "outputs"):
        if not isinstance(spec.get(key), list) or not spec.get(key):
            problems.append(f"declarative architecture: {key!r} must be a non-empty list")
    if problems:
        raise ArchitectureError(problems)
    inputs = []
    for i, inp in enumerate(spec["inputs"]):
        if not isinstance(inp, dict) or "name" not in inp or inp.get("kind") not in _INPUT_KINDS:
            raise ArchitectureError(f"declarative input {i} needs a name and a kind in {_INPUT_KINDS}")
        inputs.append(InputSpec(inp["name"], inp["kind"], inp.get("size"), inp.get("shape")))
    ops = []
    for i, op in enumerate(spec["ops"]):
        if not isinstance(op, dict) or not isinstance(op.get("name"), str) or not isinstance(op.get("inputs"), list):
            raise ArchitectureError(f"declarative op {i} needs a string 'name' and a list 'inputs'")
        if op.get("kind") not in RULES:
            raise ArchitectureError(f"declarative op {op['name']!r}: kind {op.get('kind')!r} is not one of "
                                    f"{sorted(RULES)}")
        extra = set(op) - {"name", "kind", "inputs", "output", "params", "attrs"}
        if extra:
            raise ArchitectureError(f"declarative op {op['name']!r}: unknown keys {sorted(extra)}")
        ops.append(Op(op["name"], op["kind"], list(op["inputs"]), op.get("output", op["name"]),
                      dict(op.get("params", {})), dict(op.get("attrs", {}))))
    return Program(inputs, ops, list(spec["outputs"]), dict(spec.get("tied", {})), "declarative")
