"""The architecture description: an op program over named values plus, for every tensor, the group of each axis.

Everything else (GMN graph, inverse, UNF spec, symmetries, runnable module) is generated from this one object.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

CONVERTER_VERSION = "2"  # 2: graphs carry node_act (cached descriptions and graphs of 1 are rebuilt)

GROUP_KINDS = ("input", "hidden", "output", "bias", "norm", "head", "position", "vocab")

# Axis tokens that are not neuron groups; neither is ever permuted.
SPATIAL = "@spatial"  # a kernel position axis
SINGLETON = "@one"  # a broadcast axis of size 1 (cls token, learned position table)
FIXED = "@fixed"  # any other axis that holds no neurons (a stored attention mask)


@dataclass
class NodeGroup:
    """A set of neurons (or parameter nodes) that share one permutation.

    With ``parent`` set the group is ``parent.size`` contiguous blocks that move with the parent's permutation
    (attention heads, GroupNorm groups, the channels of a flattened feature map); ``permutable`` then says
    whether positions inside a block may also be permuted.
    """

    name: str
    size: int
    kind: str
    permutable: bool
    layer: int = 0
    parent: str | None = None


# Tensor roles that hold no weights: stored beside the graph's edges, never permuted by a metanetwork.
CONSTANT_ROLES = ("num_batches_tracked", "position_ids", "token_type_ids", "causal_mask", "masked_bias")


@dataclass
class TensorSpec:
    """One parameter or buffer of the state dict and the group of each of its axes.

    ``axes[i]`` is a list of segments concatenated along axis i (packed QKV has three); a segment is a group
    name, ``@spatial``, ``@one`` or ``@fixed``. ``source`` is the size-1 parameter node (bias, norm) feeding a 1-D tensor.
    """

    name: str
    shape: list[int]
    dtype: str
    role: str
    op: str
    axes: list[list[str]]
    buffer: bool = False
    source: str | None = None
    tied_to: str | None = None

    @property
    def is_edge(self) -> bool:
        """Whether the graph holds this tensor as edges (float weights and statistics, stored once)."""
        return not self.tied_to and self.role not in CONSTANT_ROLES and self.dtype.startswith(("float", "bfloat"))


@dataclass
class Op:
    """One step of the program: ``output = kind(inputs, params, attrs)``; params map a role to a tensor name."""

    name: str
    kind: str
    inputs: list[str]
    output: str
    params: dict[str, str] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)


@dataclass
class InputSpec:
    """A program input: ``features`` (B, F), ``image`` (B, C, *spatial) or ``tokens`` (B, T) of integer ids."""

    name: str
    kind: str
    size: int | None = None
    shape: list[int] | None = None


@dataclass
class Program:
    """What the three builders (trace, families, declarative JSON) produce: ops only, no groups yet."""

    inputs: list[InputSpec]
    ops: list[Op]
    outputs: list[str]
    aliases: dict[str, str] = field(default_factory=dict)  # state-dict key -> tensor it is tied to
    family: str = "declarative"


@dataclass
class ArchitectureDescription:
    """A compiled program: the ops, the neuron groups and the axis groups of every state-dict tensor."""

    family: str
    inputs: list[InputSpec]
    ops: list[Op]
    outputs: list[str]
    groups: dict[str, NodeGroup]
    tensors: dict[str, TensorSpec]
    value_groups: dict[str, str]
    converter_version: str = CONVERTER_VERSION

    @property
    def program(self) -> Program:
        aliases = {n: t.tied_to for n, t in self.tensors.items() if t.tied_to}
        return Program(self.inputs, self.ops, self.outputs, aliases, self.family)

    def op(self, name: str) -> Op:
        return next(o for o in self.ops if o.name == name)

    def to_json(self) -> dict:
        return {
            "converter_version": self.converter_version,
            "family": self.family,
            "inputs": [asdict(i) for i in self.inputs],
            "ops": [asdict(o) for o in self.ops],
            "outputs": list(self.outputs),
            "groups": [asdict(g) for g in self.groups.values()],
            "tensors": [asdict(t) for t in self.tensors.values()],
            "value_groups": dict(self.value_groups),
        }

    @classmethod
    def from_json(cls, data: dict | str) -> ArchitectureDescription:
        if isinstance(data, str):
            data = json.loads(data)
        return cls(
            family=data["family"],
            inputs=[InputSpec(**i) for i in data["inputs"]],
            ops=[Op(**o) for o in data["ops"]],
            outputs=list(data["outputs"]),
            groups={g["name"]: NodeGroup(**g) for g in data["groups"]},
            tensors={t["name"]: TensorSpec(**t) for t in data["tensors"]},
            value_groups=dict(data["value_groups"]),
            converter_version=data["converter_version"],
        )
