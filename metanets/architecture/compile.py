"""Compile a program against a state dict: create neuron groups, tie them (residuals, tied weights, Q with K) by
union-find, and record the group of every tensor axis. Shape faults and unplaced tensors raise ArchitectureError."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .description import CONSTANT_ROLES, FIXED, SINGLETON, SPATIAL, ArchitectureDescription, InputSpec, NodeGroup, Op, Program, TensorSpec
from .errors import ArchitectureError

# When groups merge, the merged group takes the first kind of this list that any member has.
_KIND_PRIORITY = ("input", "vocab", "position", "output", "head", "norm", "bias", "hidden")
_BUFFER_ROLES = {"running_mean", "running_var", *CONSTANT_ROLES}
_NORMS = {"batchnorm", "layernorm", "rmsnorm", "groupnorm"}
_ALIASING = {"act", "dropout", "maxpool", "avgpool", "adaptive_avgpool", "to_tokens", "select_token",
             "mean_tokens", "identity"}


@dataclass
class _Pending:
    """A flattened feature map whose positions per channel are known only when a linear layer reads it."""

    channels: str
    op: str


class _Compiler:
    def __init__(self, program: Program, state_dict: dict[str, torch.Tensor]):
        self.program = program
        self.sd = state_dict
        self.groups: dict[str, NodeGroup] = {}
        self.link: dict[str, str] = {}
        self.order: dict[str, int] = {}
        self.values: dict[str, str | _Pending | None] = {}
        self.tensors: dict[str, TensorSpec] = {}
        self.problems: list[str] = []
        self.layer = 0

    # --- groups -------------------------------------------------------------------------------------------
    def new_group(self, name: str, size: int, kind: str, permutable: bool, parent: str | None = None) -> str:
        if name in self.groups:
            raise ArchitectureError(f"two groups named {name!r}: op names must be unique")
        if parent is not None and size % self.groups[self.find(parent)].size:
            raise ArchitectureError(f"group {name!r} of size {size} does not split into "
                                    f"{self.groups[self.find(parent)].size} blocks")
        self.groups[name] = NodeGroup(name, int(size), kind, permutable, self.layer, parent)
        self.link[name] = name
        self.order[name] = len(self.order)
        return name

    def find(self, name: str) -> str:
        root = name
        while self.link[root] != root:
            root = self.link[root]
        while self.link[name] != root:
            self.link[name], name = root, self.link[name]
        return root

    def unify(self, a: str, b: str, why: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        ga, gb = self.groups[ra], self.groups[rb]
        if ga.size != gb.size:
            raise ArchitectureError(f"{why}: sizes {ga.size} ({ra}) and {gb.size} ({rb}) differ")
        if self.order[rb] < self.order[ra]:
            ra, rb, ga, gb = rb, ra, gb, ga
        self.link[rb] = ra
        ga.kind = min(ga.kind, gb.kind, key=_KIND_PRIORITY.index)
        ga.permutable = ga.permutable and gb.permutable
        if ga.parent is None:
            ga.parent = gb.parent
        elif gb.parent is not None:
            pa, pb = self.groups[self.find(ga.parent)], self.groups[self.find(gb.parent)]
            if pa.size != pb.size:
                raise ArchitectureError(f"{why}: {ra} is split into {pa.size} blocks but {rb} into {pb.size}")
            self.unify(pa.name, pb.name, why)
        return ra

    def size(self, group: str) -> int:
        return self.groups[self.find(group)].size

    # --- values and tensors -------------------------------------------------------------------------------
    def value(self, name: str, op: Op, size: int | None = None, role: str | None = None) -> str:
        """The group of a value's feature axis, checked against ``size`` (read by tensor ``role``) when given."""
        if name not in self.values:
            raise ArchitectureError(f"op {op.name!r} reads {name!r}, which no earlier op produces")
        group = self.values[name]
        if isinstance(group, _Pending):
            channels = self.size(group.channels)
            if size is None or size == channels:
                group = group.channels
            elif size % channels:
                raise ArchitectureError(f"tensor {op.params.get(role)!r} ({op.kind} {op.name!r}): {size} input "
                                        f"features are not a multiple of the {channels} channels flattened by "
                                        f"{group.op!r}")
            else:
                group = self.new_group(group.op, size, "hidden", False, parent=group.channels)
            self.values[name] = group
        if group is None:
            raise ArchitectureError(f"op {op.name!r} reads token ids {name!r} as features")
        if size is not None and self.size(group) != size:
            reader = f"tensor {op.params[role]!r}" if role else f"op {op.name!r}"
            raise ArchitectureError(f"{reader} ({op.kind} {op.name!r}) expects {size} input features but "
                                    f"{name!r} has {self.size(group)}")
        return group

    def shape(self, op: Op, role: str, optional: bool = False) -> tuple[int, ...] | None:
        name = op.params.get(role)
        if name is None:
            if optional:
                return None
            raise ArchitectureError(f"op {op.name!r} ({op.kind}) needs a {role!r} tensor")
        if name not in self.sd:
            raise ArchitectureError(f"op {op.name!r}: tensor {name!r} is not in the state dict")
        return tuple(self.sd[name].shape)

    def place(self, op: Op, role: str, axes: list[list[str]], source: str | None = None) -> None:
        name = op.params[role]
        t = self.sd[name]
        shape = tuple(t.shape)
        if len(axes) != len(shape):
            raise ArchitectureError(f"tensor {name!r} ({op.kind} {role}) has {len(shape)} axes, expected {len(axes)}")
        for i, segments in enumerate(axes):
            sizes = [1 if s == SINGLETON else shape[i] if s in (SPATIAL, FIXED) else self.size(s) for s in segments]
            if sum(sizes) != shape[i]:
                raise ArchitectureError(f"tensor {name!r} axis {i} has size {shape[i]} but op {op.name!r} "
                                        f"needs {'+'.join(map(str, sizes))}")
        if name in self.tensors:  # a tied weight used by a second op: its axes name the same groups
            prev = self.tensors[name]
            for old, new in zip(prev.axes, axes):
                if len(old) != len(new):
                    raise ArchitectureError(f"tied tensor {name!r} is used with different layouts")
                for a, b in zip(old, new):
                    if a != b and not a.startswith("@") and not b.startswith("@"):
                        self.unify(a, b, f"tied tensor {name!r}")
            return
        self.tensors[name] = TensorSpec(name, list(shape), str(t.dtype).removeprefix("torch."), role, op.name,
                                        axes, role in _BUFFER_ROLES, source)

    def source(self, op: Op, role: str, kind: str) -> str:
        return self.new_group(f"{op.name}.{role}", 1, kind, False)

    def place_vector(self, op: Op, role: str, group: str, kind: str) -> None:
        """A per-neuron vector (bias, norm scale) fed by its own size-1 parameter node."""
        if op.params.get(role) is not None:
            self.shape(op, role)
            self.place(op, role, [[group]], self.source(op, role, kind))

    # --- driver -------------------------------------------------------------------------------------------
    def run(self) -> ArchitectureDescription:
        for inp in self.program.inputs:
            if inp.kind == "tokens":
                self.values[inp.name] = None
            else:
                if not inp.size:
                    raise ArchitectureError(f"input {inp.name!r} needs a feature size")
                self.values[inp.name] = self.new_group(inp.name, inp.size, "input", False)
        for i, op in enumerate(self.program.ops):
            self.layer = i + 1
            rule = RULES.get(op.kind)
            if rule is None:
                raise ArchitectureError(f"op {op.name!r}: unsupported kind {op.kind!r}")
            rule(self, op)
        for out in self.program.outputs:
            g = self.groups[self.find(self.value(out, Op(out, "output", [out], out)))]
            g.kind, g.permutable = min(g.kind, "output", key=_KIND_PRIORITY.index), False
        for alias, target in self.program.aliases.items():
            self._alias(alias, target)
        unplaced = [k for k in self.sd if k not in self.tensors]
        if unplaced:
            raise ArchitectureError([f"tensor {k!r} {tuple(self.sd[k].shape)} fits no op of the "
                                     f"{self.program.family} architecture" for k in unplaced])
        return self._finish()

    def _alias(self, alias: str, target: str) -> None:
        if alias not in self.sd or target not in self.tensors:
            raise ArchitectureError(f"tied tensor {alias!r} -> {target!r}: one of them is missing")
        a, t = self.sd[alias], self.sd[target]
        if a.shape != t.shape or a.dtype != t.dtype or not torch.equal(a, t):
            raise ArchitectureError(f"tensor {alias!r} is declared tied to {target!r} but differs from it")
        spec = self.tensors[target]
        self.tensors[alias] = TensorSpec(alias, spec.shape, spec.dtype, spec.role, spec.op, spec.axes, spec.buffer,
                                         spec.source, tied_to=target)

    def _finish(self) -> ArchitectureDescription:
        roots = {n: g for n, g in self.groups.items() if self.find(n) == n}
        for g in roots.values():
            if g.parent is not None:
                g.parent = self.find(g.parent)
            if g.kind in ("input", "output", "vocab", "position", "bias"):
                g.permutable = False

        def canon(seg: str) -> str:
            return seg if seg.startswith("@") else self.find(seg)

        tensors = {}
        for name in self.sd:  # state-dict order, so the inverse returns keys in the checkpoint's order
            t = self.tensors[name]
            t.axes = [[canon(s) for s in axis] for axis in t.axes]
            t.source = t.source and self.find(t.source)
            tensors[name] = t
        values = {v: self.find(g.channels if isinstance(g, _Pending) else g)
                  for v, g in self.values.items() if g is not None}
        return ArchitectureDescription(self.program.family, self.program.inputs, self.program.ops,
                                       self.program.outputs, roots, tensors, values)


# --- one rule per op kind ---------------------------------------------------------------------------------
def _linear(c: _Compiler, op: Op) -> None:
    w = c.shape(op, "weight")
    if len(w) != 2:
        raise ArchitectureError(f"tensor {op.params['weight']!r} of linear {op.name!r} must be 2-D, is {w}")
    out_f, in_f = (w[1], w[0]) if op.attrs.get("transposed") else w
    x = c.value(op.inputs[0], op, in_f, "weight")
    name = op.params["weight"]
    if name in c.tensors:  # tied: the output group is the one the weight already names
        spec = c.tensors[name]
        y = spec.axes[1 if op.attrs.get("transposed") else 0][0]
    else:
        y = c.new_group(op.name, out_f, "hidden", True)
    c.place(op, "weight", [[x], [y]] if op.attrs.get("transposed") else [[y], [x]])
    c.place_vector(op, "bias", y, "bias")
    c.values[op.output] = y


def _conv(c: _Compiler, op: Op) -> None:
    w = c.shape(op, "weight")
    if len(w) < 3:
        raise ArchitectureError(f"tensor {op.params['weight']!r} of conv {op.name!r} must be 3-D to 5-D, is {w}")
    if op.attrs.get("groups", 1) != 1:
        raise ArchitectureError(f"conv {op.name!r}: grouped and depthwise convolutions are not supported yet")
    x = c.value(op.inputs[0], op, w[1], "weight")
    y = c.new_group(op.name, w[0], "hidden", True)
    c.place(op, "weight", [[y], [x]] + [[SPATIAL]] * (len(w) - 2))
    c.place_vector(op, "bias", y, "bias")
    c.values[op.output] = y


def _norm(c: _Compiler, op: Op) -> None:
    x = c.value(op.inputs[0], op)
    if op.kind == "groupnorm":
        groups = int(op.attrs["num_groups"])
        if c.size(x) % groups:
            raise ArchitectureError(f"groupnorm {op.name!r}: {groups} groups do not divide {c.size(x)} channels")
        if groups > 1:
            blocks = c.new_group(f"{op.name}.groups", groups, "norm", True)
            if c.groups[c.find(x)].parent is not None:
                raise ArchitectureError(f"groupnorm {op.name!r}: channels of {x!r} are already split into blocks")
            c.groups[c.find(x)].parent = blocks
    for role in ("weight", "bias", "running_mean", "running_var"):
        c.place_vector(op, role, x, "norm")
    if op.params.get("num_batches_tracked"):
        c.shape(op, "num_batches_tracked")
        c.place(op, "num_batches_tracked", [])
    c.values[op.output] = x


def _layerscale(c: _Compiler, op: Op) -> None:
    x = c.value(op.inputs[0], op)
    c.shape(op, "weight")
    c.place_vector(op, "weight", x, "norm")
    c.values[op.output] = x


def _alias(c: _Compiler, op: Op) -> None:
    c.values[op.output] = c.values[op.inputs[0]] if op.inputs[0] in c.values else c.value(op.inputs[0], op)


def _merge(c: _Compiler, op: Op) -> None:
    a, b = (c.value(v, op) for v in op.inputs)
    c.values[op.output] = c.unify(a, b, f"{op.kind} {op.name!r}")


def _flatten(c: _Compiler, op: Op) -> None:
    x = c.value(op.inputs[0], op)
    c.values[op.output] = _Pending(x, op.name)


def _embedding(c: _Compiler, op: Op) -> None:
    w = c.shape(op, "weight")
    if len(w) != 2:
        raise ArchitectureError(f"embedding {op.params['weight']!r} must be 2-D, is {w}")
    if op.inputs[0] not in c.values or c.values[op.inputs[0]] is not None:
        raise ArchitectureError(f"embedding {op.name!r} must read token ids")
    vocab = c.new_group(f"{op.name}.vocab", w[0], "vocab", False)
    y = c.new_group(op.name, w[1], "hidden", True)
    c.place(op, "weight", [[vocab], [y]])
    c.values[op.output] = y


def _add_positions(c: _Compiler, op: Op) -> None:
    w = c.shape(op, "weight")
    x = c.value(op.inputs[0], op, w[-1], "weight")
    if len(w) not in (2, 3) or (len(w) == 3 and w[0] != 1):
        raise ArchitectureError(f"position table {op.params['weight']!r} must be (P, D) or (1, P, D), is {w}")
    pos = c.new_group(f"{op.name}.positions", w[-2], "position", False)
    if op.params.get("position_ids"):
        ids = c.shape(op, "position_ids")
        c.place(op, "position_ids", [[SINGLETON], [pos]] if len(ids) == 2 else [[pos]])
    c.place(op, "weight", ([[SINGLETON]] if len(w) == 3 else []) + [[pos], [x]])
    c.values[op.output] = x


def _add_embedding(c: _Compiler, op: Op) -> None:
    w = c.shape(op, "weight")
    x = c.value(op.inputs[0], op, w[-1], "weight")
    vocab = c.new_group(f"{op.name}.vocab", w[0], "vocab", False)
    c.place(op, "weight", [[vocab], [x]])
    if op.params.get("token_type_ids"):  # the default ids some BERT checkpoints store
        c.place(op, "token_type_ids", [[FIXED]] * len(c.shape(op, "token_type_ids")))
    c.values[op.output] = x


def _cls_token(c: _Compiler, op: Op) -> None:
    w = c.shape(op, "weight")
    if len(w) != 3 or w[:2] != (1, 1):
        raise ArchitectureError(f"class token {op.params['weight']!r} must be (1, 1, D), is {w}")
    x = c.value(op.inputs[0], op, w[-1], "weight")
    c.place(op, "weight", [[SINGLETON], [SINGLETON], [x]], c.new_group(f"{op.name}.token", 1, "position", False))
    c.values[op.output] = x


def _attention(c: _Compiler, op: Op) -> None:
    heads = int(op.attrs["heads"])
    kv_heads = int(op.attrs.get("kv_heads") or heads)
    transposed = op.attrs.get("transposed", False)

    def out_in(role):
        w = c.shape(op, role)
        if len(w) != 2:
            raise ArchitectureError(f"attention tensor {op.params[role]!r} must be 2-D, is {w}")
        return (w[1], w[0]) if transposed else w

    def mat(y, x):
        return [[x], y] if transposed else [y, [x]]

    packed = "qkv_weight" in op.params
    if packed:
        out3, d_in = out_in("qkv_weight")
        if out3 % 3:
            raise ArchitectureError(f"packed QKV {op.params['qkv_weight']!r} has {out3} outputs, not 3 x width")
        q_out = k_out = v_out = out3 // 3
    else:
        (q_out, d_in), (k_out, _), (v_out, _) = out_in("q_weight"), out_in("k_weight"), out_in("v_weight")
    x = c.value(op.inputs[0], op, d_in, "qkv_weight" if packed else "q_weight")
    if heads <= 0 or q_out % heads or kv_heads <= 0 or heads % kv_heads:
        raise ArchitectureError(f"attention {op.name!r}: {heads} heads ({kv_heads} key/value heads) do not divide "
                                f"the query width {q_out}")
    dh = q_out // heads
    if k_out != kv_heads * dh or v_out % kv_heads:
        raise ArchitectureError(f"attention {op.name!r}: key width {k_out} / value width {v_out} do not fit "
                                f"{kv_heads} key/value heads of size {dh}")
    h = c.new_group(f"{op.name}.heads", kv_heads, "head", True)
    rope = op.attrs.get("rope_theta") is not None
    if kv_heads == heads:
        q = k = c.new_group(f"{op.name}.qk", q_out, "hidden", not rope, parent=h)
        v = o_in = c.new_group(f"{op.name}.vo", v_out, "hidden", True, parent=h)
    else:  # grouped-query attention: only whole key/value heads (with their query heads) move
        q = c.new_group(f"{op.name}.q", q_out, "hidden", False, parent=h)
        k = c.new_group(f"{op.name}.k", k_out, "hidden", False, parent=h)
        v = c.new_group(f"{op.name}.v", v_out, "hidden", False, parent=h)
        o_in = c.new_group(f"{op.name}.o_in", v_out * heads // kv_heads, "hidden", False, parent=h)
    o_out, o_width = out_in("o_weight")
    if o_width != c.size(o_in):
        raise ArchitectureError(f"attention {op.name!r}: output projection reads {o_width} features, "
                                f"heads give {c.size(o_in)}")
    y = c.new_group(op.name, o_out, "hidden", True)
    if packed:
        c.place(op, "qkv_weight", mat([q, k, v], x))
        if op.params.get("qkv_bias"):
            c.shape(op, "qkv_bias")
            c.place(op, "qkv_bias", [[q, k, v]], c.source(op, "qkv_bias", "bias"))
    else:
        for role, g in (("q", q), ("k", k), ("v", v)):
            c.place(op, f"{role}_weight", mat([g], x))
            c.place_vector(op, f"{role}_bias", g, "bias")
    c.place(op, "o_weight", mat([y], o_in))
    c.place_vector(op, "o_bias", y, "bias")
    for role in ("causal_mask", "masked_bias"):  # constants stored by older GPT-2 checkpoints
        if op.params.get(role):
            c.place(op, role, [[FIXED]] * len(c.shape(op, role)))
    c.values[op.output] = y


RULES = {"linear": _linear, "conv": _conv, "layerscale": _layerscale, "add": _merge, "mul": _merge,
         "flatten": _flatten, "embedding": _embedding, "add_positions": _add_positions,
         "add_embedding": _add_embedding, "cls_token": _cls_token, "attention": _attention,
         **{k: _norm for k in _NORMS}, **{k: _alias for k in _ALIASING}}


def compile_program(program: Program, state_dict: dict[str, torch.Tensor]) -> ArchitectureDescription:
    """Check ``program`` against the tensors of ``state_dict`` and return the description with all groups."""
    names = [op.name for op in program.ops]
    if len(set(names)) != len(names):
        raise ArchitectureError(f"op names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    for key, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise ArchitectureError(f"state dict entry {key!r} is not a tensor")
    return _Compiler(program, state_dict).run()


__all__ = ["compile_program", "InputSpec"]
