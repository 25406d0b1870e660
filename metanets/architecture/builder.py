"""A small helper to write programs: each call appends one op whose output value carries the op's name."""
from __future__ import annotations

from .description import InputSpec, Op, Program


class ProgramBuilder:
    """Appends ops in execution order; ``params`` are state-dict keys, prefixed with ``prefix``."""

    def __init__(self, family: str, prefix: str = ""):
        self.family, self.prefix = family, prefix
        self.inputs: list[InputSpec] = []
        self.ops: list[Op] = []
        self.aliases: dict[str, str] = {}

    def input(self, name: str, kind: str, size: int | None = None, shape: list[int] | None = None) -> str:
        self.inputs.append(InputSpec(name, kind, size, shape))
        return name

    def __call__(self, kind: str, name: str, *inputs: str, params: dict[str, str | None] | None = None,
                 **attrs) -> str:
        params = {role: self.prefix + key for role, key in (params or {}).items() if key is not None}
        self.ops.append(Op(name, kind, list(inputs), name, params, attrs))
        return name

    def module(self, kind: str, module: str, *inputs: str, keys: dict[str, str] | None = None, **attrs) -> str:
        """An op for a torch module at path ``module``; ``keys`` maps role to the parameter's local name."""
        return self(kind, module, *inputs, params={r: f"{module}.{k}" for r, k in (keys or {}).items()}, **attrs)

    def program(self, *outputs: str) -> Program:
        return Program(self.inputs, self.ops, list(outputs), dict(self.aliases), self.family)
