"""Build a program from a live module with ``torch.fx``: standard torch.nn layers and a few functions are mapped to
ops; anything else with parameters, or any call that cannot be mapped, is refused by name."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .description import InputSpec, Op, Program
from .errors import ArchitectureError

class UnsupportedModule(ArchitectureError):
    """The trace found a layer we refuse (grouped conv, RNN, masked attention): names would misdescribe it too."""


_ACT_MODULES = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ELU: "elu",
                nn.Softplus: "softplus", nn.Mish: "mish", nn.Hardswish: "hardswish", nn.ReLU6: "relu6"}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.silu: "silu", torch.tanh: "tanh", torch.sigmoid: "sigmoid",
                  F.tanh: "tanh", F.sigmoid: "sigmoid", F.elu: "elu", F.mish: "mish"}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _conv_padding(m: nn.Module) -> list[int]:
    if m.padding_mode != "zeros":
        raise UnsupportedModule(f"conv {type(m).__name__} with padding_mode {m.padding_mode!r} is not supported")
    if m.padding == "valid":
        return [0] * len(m.kernel_size)
    if m.padding == "same":
        if any(k % 2 == 0 for k in m.kernel_size) or any(d != 1 for d in m.dilation):
            raise UnsupportedModule("padding='same' is only supported for odd kernels without dilation")
        return [k // 2 for k in m.kernel_size]
    return list(m.padding)


class _Tracer:
    def __init__(self, module: nn.Module, example_inputs: tuple | None):
        self.module = module
        self.examples = example_inputs
        self.ops: list[Op] = []
        self.inputs: list[InputSpec] = []
        self.values: dict[fx.Node, str] = {}
        self.params: dict[fx.Node, str] = {}
        self.names: set[str] = set()
        self.uses: dict[str, int] = {}

    def name(self, base: str) -> str:
        n = base
        while n in self.names:
            self.uses[base] = self.uses.get(base, 1) + 1
            n = f"{base}#{self.uses[base]}"
        self.names.add(n)
        return n

    def emit(self, node: fx.Node, kind: str, inputs: list[fx.Node], params=None, base=None, **attrs) -> None:
        name = self.name(base or node.name)
        missing = [i for i in inputs if i not in self.values]
        if missing:
            raise ArchitectureError(f"traced op {node.name!r} reads {missing[0].name!r}, which is not a network value")
        self.ops.append(Op(name, kind, [self.values[i] for i in inputs], name,
                           {r: k for r, k in (params or {}).items() if k is not None}, attrs))
        self.values[node] = name

    def run(self) -> Program:
        try:
            graph = fx.symbolic_trace(self.module).graph
        except Exception as exc:  # fx raises many kinds of errors on dynamic control flow
            raise ArchitectureError(f"torch.fx could not trace {type(self.module).__name__}: {exc}") from exc
        outputs = []
        for node in graph.nodes:
            if node.op == "placeholder":
                self.placeholder(node, graph)
            elif node.op == "get_attr":
                self.params[node] = node.target
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)
            elif node.op == "output":
                outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]]
                outputs = [self.values[o] for o in outs]
        return Program(self.inputs, self.ops, outputs, {}, "traced")

    def placeholder(self, node: fx.Node, graph: fx.Graph) -> None:
        index = len(self.inputs)
        example = self.examples[index] if self.examples and index < len(self.examples) else None
        consumer = next(iter(node.users), None)
        mod = self.module.get_submodule(consumer.target) if consumer is not None and consumer.op == "call_module" \
            else None
        if isinstance(mod, nn.Embedding) or (example is not None and not example.is_floating_point()):
            spec = InputSpec(node.name, "tokens")
        elif isinstance(mod, nn.Linear):
            spec = InputSpec(node.name, "features", mod.in_features)
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spec = InputSpec(node.name, "image", mod.in_channels)
        elif example is not None:
            spec = InputSpec(node.name, "image" if example.dim() > 2 else "features",
                             example.shape[1], list(example.shape[1:]))
        else:
            raise ArchitectureError(f"input {node.name!r}: its size is unknown; pass example_inputs")
        self.inputs.append(spec)
        self.values[node] = node.name

    def call_module(self, node: fx.Node) -> None:
        path = node.target
        m = self.module.get_submodule(path)
        x = node.args[0] if node.args else None

        def keys(*roles):
            return {r.split(":")[0]: f"{path}.{r.split(':')[-1]}" for r in roles
                    if getattr(m, r.split(":")[-1], None) is not None}

        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups != 1:
            raise UnsupportedModule(f"conv {path!r}: grouped and depthwise convolutions are not supported yet")
        if isinstance(m, nn.Linear):
            self.emit(node, "linear", [x], keys("weight", "bias"), path)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            self.emit(node, "conv", [x], keys("weight", "bias"), path, stride=list(m.stride),
                      padding=_conv_padding(m), dilation=list(m.dilation), groups=m.groups)
        elif isinstance(m, _NORMS):
            if m.running_mean is None:
                raise UnsupportedModule(f"batchnorm {path!r} without running statistics is not supported")
            self.emit(node, "batchnorm", [x], keys("weight", "bias", "running_mean", "running_var",
                                                   "num_batches_tracked"), path, eps=m.eps)
        elif isinstance(m, nn.LayerNorm):
            if len(m.normalized_shape) != 1:
                raise UnsupportedModule(f"layernorm {path!r} over {len(m.normalized_shape)} axes is not supported")
            self.emit(node, "layernorm", [x], keys("weight", "bias"), path, eps=m.eps)
        elif isinstance(m, nn.GroupNorm):
            self.emit(node, "groupnorm", [x], keys("weight", "bias"), path, num_groups=m.num_groups, eps=m.eps)
        elif isinstance(m, nn.RMSNorm):
            self.emit(node, "rmsnorm", [x], keys("weight"), path,
                      eps=m.eps if m.eps is not None else torch.finfo(torch.float32).eps)
        elif type(m) in _ACT_MODULES:
            self.emit(node, "act", [x], None, path, fn=_ACT_MODULES[type(m)])
        elif isinstance(m, nn.GELU):
            self.emit(node, "act", [x], None, path, fn="gelu_tanh" if m.approximate == "tanh" else "gelu")
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            self.emit(node, "identity", [x], None, path)
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            if getattr(m, "dilation", 1) not in (1, (1, 1), (1, 1, 1)) or getattr(m, "ceil_mode", False):
                raise ArchitectureError(f"pool {path!r}: dilation and ceil_mode are not supported")
            self.emit(node, "maxpool" if "Max" in type(m).__name__ else "avgpool", [x], None, path,
                      kernel_size=m.kernel_size, stride=m.stride, padding=m.padding)
        elif isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            size = m.output_size if isinstance(m.output_size, int) else tuple(m.output_size)
            if size not in (1, (1,), (1, 1), (1, 1, 1)):
                raise ArchitectureError(f"adaptive pool {path!r} must pool to size 1")
            self.emit(node, "adaptive_avgpool", [x], None, path, output_size=1)
        elif isinstance(m, nn.Flatten):
            if m.end_dim != -1:
                raise ArchitectureError(f"flatten {path!r} must flatten to the last axis")
            self.emit(node, "flatten", [x], None, path, start_dim=m.start_dim)
        elif isinstance(m, nn.Embedding):
            self.emit(node, "embedding", [x], keys("weight"), path)
        elif isinstance(m, nn.MultiheadAttention):
            self.attention(node, m, path)
        else:
            error = UnsupportedModule if any(True for _ in m.parameters()) else ArchitectureError
            raise error(f"module {path!r} of type {type(m).__name__} cannot be traced into an op")

    def attention(self, node: fx.Node, m: nn.MultiheadAttention, path: str) -> None:
        q, k, v = (list(node.args) + [node.kwargs.get(n) for n in ("query", "key", "value")])[:3]
        if not (q is k is v):
            raise UnsupportedModule(f"attention {path!r}: only self-attention (query = key = value) is supported")
        if any(node.kwargs.get(n) is not None for n in ("attn_mask", "key_padding_mask")) or m.bias_k is not None:
            raise UnsupportedModule(f"attention {path!r}: masks and bias_k/bias_v are not supported")
        params = {"o_weight": f"{path}.out_proj.weight",
                  "o_bias": f"{path}.out_proj.bias" if m.out_proj.bias is not None else None}
        if m._qkv_same_embed_dim:
            params.update(qkv_weight=f"{path}.in_proj_weight",
                          qkv_bias=f"{path}.in_proj_bias" if m.in_proj_bias is not None else None)
        else:
            raise UnsupportedModule(f"attention {path!r}: kdim/vdim different from embed_dim are not supported")
        self.emit(node, "attention", [q], params, path, heads=m.num_heads, batch_first=m.batch_first,
                  causal=bool(node.kwargs.get("is_causal", False)))

    def call_function(self, node: fx.Node) -> None:
        t, args = node.target, node.args
        if t in (operator.getitem,) and args[0] in self.values and args[1] == 0 and self._is_attention(args[0]):
            self.values[node] = self.values[args[0]]
        elif t in (operator.add, torch.add, "add") and len(args) == 2:
            a, b = args
            if a in self.params or b in self.params:
                x, p = (b, a) if a in self.params else (a, b)
                self.emit(node, "add_positions", [x], {"weight": self.params[p]})
            else:
                self.emit(node, "add", [a, b])
        elif t in (operator.mul, torch.mul, "mul") and len(args) == 2 and all(a in self.values for a in args):
            self.emit(node, "mul", list(args))
        elif t in _ACT_FUNCTIONS or t in ("relu", "sigmoid", "tanh"):
            self.emit(node, "act", [args[0]], fn=_ACT_FUNCTIONS.get(t, t))
        elif t is F.gelu:
            self.emit(node, "act", [args[0]], fn="gelu_tanh" if node.kwargs.get("approximate") == "tanh"
                      else "gelu")
        elif t in (torch.flatten, "flatten"):
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1 or (len(args) > 2 and args[2] != -1):
                raise ArchitectureError(f"flatten {node.name!r} must be flatten(x, 1)")
            self.emit(node, "flatten", [args[0]], start_dim=1)
        elif t is F.linear and args[1] in self.params:
            bias = args[2] if len(args) > 2 else node.kwargs.get("bias")
            self.emit(node, "linear", [args[0]], {"weight": self.params[args[1]],
                                                  "bias": self.params.get(bias) if bias is not None else None})
        elif t in ("mean", torch.mean) and (args[1:2] == (1,) or node.kwargs.get("dim") == 1):
            self.emit(node, "mean_tokens", [args[0]])
        else:
            raise ArchitectureError(f"traced call {getattr(t, '__name__', t)!r} at {node.name!r} has no op")

    def _is_attention(self, node: fx.Node) -> bool:
        op = next((o for o in self.ops if o.output == self.values[node]), None)
        return op is not None and op.kind == "attention"


def trace_program(module: nn.Module, example_inputs: tuple | None = None) -> Program:
    """The program of ``module`` from a ``torch.fx`` trace; ``example_inputs`` settle input kinds and sizes."""
    return _Tracer(module, example_inputs).run()
