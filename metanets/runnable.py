"""Run a description: rebuild a module from description plus weights, and capture activations at named layers."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .architecture.description import ArchitectureDescription, Op

# Capture name suffix for the concatenated attention heads of an attention op (the output projection's input):
# ``capture=["blocks.0.attn" + HEADS]`` returns the (batch, tokens, heads * head_dim) tensor, batch first.
HEADS = ":heads"

_ACTS = {
    "relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu,
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda x: x, "leaky_relu": F.leaky_relu,
    "elu": F.elu, "softplus": F.softplus, "mish": F.mish, "hardswish": F.hardswish, "relu6": F.relu6,
}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding in the half-split convention (LLaMA); angles computed in float32."""
    dh, t = x.shape[-1], x.shape[-2]
    inv = 1.0 / (theta ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    freqs = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return x * emb.cos().to(x.dtype) + _rotate_half(x) * emb.sin().to(x.dtype)


class RebuiltNetwork(nn.Module):
    """An ``nn.Module`` that executes the op program of a description with the given weights."""

    def __init__(self, desc: ArchitectureDescription, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        self.desc = desc
        self.keys = {name: name.replace(".", "__") for name in desc.tensors if not desc.tensors[name].tied_to}
        for name, key in self.keys.items():
            t = state_dict[name].detach().clone()
            if desc.tensors[name].buffer or not t.is_floating_point():
                self.register_buffer(key, t)
            else:
                self.register_parameter(key, nn.Parameter(t))

    def tensor(self, op: Op, role: str) -> torch.Tensor | None:
        name = op.params.get(role)
        return None if name is None else getattr(self, self.keys[name])

    def forward(self, *inputs: torch.Tensor, capture: list[str] | None = None):
        values = {spec.name: x for spec, x in zip(self.desc.inputs, inputs)}
        captured = {}
        for op in self.desc.ops:
            args = [values.get(v) for v in op.inputs]
            if capture is not None and op.kind == "attention" and op.name + HEADS in capture:
                values[op.output] = _attention(self, op, *args, heads_out=captured)
            else:
                values[op.output] = _RUN[op.kind](self, op, *args)
            if capture is not None and (op.name in capture or op.output in capture):
                captured[op.name if op.name in capture else op.output] = values[op.output]
        outs = [values[o] for o in self.desc.outputs]
        out = outs[0] if len(outs) == 1 else tuple(outs)
        return (out, captured) if capture is not None else out


def _linear(m, op, x):
    w = m.tensor(op, "weight")
    return F.linear(x, w.t() if op.attrs.get("transposed") else w, m.tensor(op, "bias"))


def _conv(m, op, x):
    w = m.tensor(op, "weight")
    fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    return fn(x, w, m.tensor(op, "bias"), op.attrs.get("stride", 1), op.attrs.get("padding", 0),
              op.attrs.get("dilation", 1))


def _batchnorm(m, op, x):
    return F.batch_norm(x, m.tensor(op, "running_mean"), m.tensor(op, "running_var"), m.tensor(op, "weight"),
                        m.tensor(op, "bias"), False, 0.0, op.attrs.get("eps", 1e-5))


def _layernorm(m, op, x):
    return F.layer_norm(x, x.shape[-1:], m.tensor(op, "weight"), m.tensor(op, "bias"), op.attrs.get("eps", 1e-5))


def _rmsnorm(m, op, x):
    dtype = x.dtype
    if op.attrs.get("upcast"):  # Hugging Face LLaMA normalises in float32
        x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + op.attrs.get("eps", 1e-6))
    return m.tensor(op, "weight") * x.to(dtype)


def _groupnorm(m, op, x):
    return F.group_norm(x, op.attrs["num_groups"], m.tensor(op, "weight"), m.tensor(op, "bias"),
                        op.attrs.get("eps", 1e-5))


def _pool(m, op, x):
    fn = {("max", 3): F.max_pool1d, ("max", 4): F.max_pool2d, ("max", 5): F.max_pool3d,
          ("avg", 3): F.avg_pool1d, ("avg", 4): F.avg_pool2d, ("avg", 5): F.avg_pool3d}[op.kind[:3], x.dim()]
    return fn(x, op.attrs["kernel_size"], op.attrs.get("stride") or op.attrs["kernel_size"],
              op.attrs.get("padding", 0))


def _adaptive_avgpool(m, op, x):
    fn = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[x.dim()]
    return fn(x, op.attrs.get("output_size", 1))


def _attention(m, op, x, heads_out: dict | None = None):
    """Self-attention; with ``heads_out`` the concatenated heads (the output projection's input) are stored there
    under ``op.name + HEADS``."""
    heads = op.attrs["heads"]
    kv_heads = op.attrs.get("kv_heads") or heads
    transposed = op.attrs.get("transposed", False)
    if not op.attrs.get("batch_first", True):
        x = x.transpose(0, 1)

    def proj(w, b):
        return F.linear(x, w.t() if transposed else w, b)

    if "qkv_weight" in op.params:
        q, k, v = proj(m.tensor(op, "qkv_weight"), m.tensor(op, "qkv_bias")).chunk(3, dim=-1)
    else:
        q, k, v = (proj(m.tensor(op, f"{r}_weight"), m.tensor(op, f"{r}_bias")) for r in "qkv")
    b, t = x.shape[:2]
    q = q.view(b, t, heads, -1).transpose(1, 2)
    k = k.view(b, t, kv_heads, -1).transpose(1, 2)
    v = v.view(b, t, kv_heads, -1).transpose(1, 2)
    if op.attrs.get("rope_theta") is not None:
        q, k = _rope(q, op.attrs["rope_theta"]), _rope(k, op.attrs["rope_theta"])
    if kv_heads != heads:
        k, v = (z.repeat_interleave(heads // kv_heads, dim=1) for z in (k, v))
    scale = op.attrs.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    att = (q @ k.transpose(-2, -1)) * scale
    if op.attrs.get("causal"):
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
    if heads_out is not None:
        heads_out[op.name + HEADS] = y
    w = m.tensor(op, "o_weight")
    y = F.linear(y, w.t() if transposed else w, m.tensor(op, "o_bias"))
    return y if op.attrs.get("batch_first", True) else y.transpose(0, 1)


def _add_positions(m, op, x):
    w = m.tensor(op, "weight")
    w = w if w.dim() == 2 else w[0]
    return x + w[: x.shape[-2]]


def _add_embedding(m, op, x, ids=None):
    w = m.tensor(op, "weight")
    return x + (w[0] if ids is None else F.embedding(ids, w))


def _cls_token(m, op, x):
    return torch.cat((m.tensor(op, "weight").expand(x.shape[0], -1, -1), x), dim=1)


_RUN = {
    "linear": _linear, "conv": _conv, "batchnorm": _batchnorm, "layernorm": _layernorm, "rmsnorm": _rmsnorm,
    "groupnorm": _groupnorm, "maxpool": _pool, "avgpool": _pool, "adaptive_avgpool": _adaptive_avgpool,
    "attention": _attention, "add_positions": _add_positions, "add_embedding": _add_embedding,
    "cls_token": _cls_token,
    "act": lambda m, op, x: _ACTS[op.attrs.get("fn", "relu")](x),
    "layerscale": lambda m, op, x: x * m.tensor(op, "weight"),
    "add": lambda m, op, a, b: a + b,
    "mul": lambda m, op, a, b: a * b,
    "flatten": lambda m, op, x: x.flatten(op.attrs.get("start_dim", 1)),
    "embedding": lambda m, op, ids: F.embedding(ids, m.tensor(op, "weight")),
    "to_tokens": lambda m, op, x: x.flatten(2).transpose(1, 2),
    "select_token": lambda m, op, x: x[:, op.attrs.get("index", 0)],
    "mean_tokens": lambda m, op, x: x[:, op.attrs.get("start", 0):].mean(1),
    "dropout": lambda m, op, x: x,
    "identity": lambda m, op, x: x,
}

ACTIVATIONS = tuple(_ACTS)


def rebuild(desc: ArchitectureDescription, state_dict: dict[str, torch.Tensor]) -> RebuiltNetwork:
    """A module in eval mode whose forward equals the original network's, built from description and weights."""
    return RebuiltNetwork(desc, state_dict).eval()


@torch.no_grad()
def capture_activations(module: nn.Module, inputs, layers: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named layers on ``inputs``: op or value names of a rebuilt network (``<attention op>:heads``
    for the concatenated heads an attention op feeds to its output projection), else submodule names."""
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    if isinstance(module, RebuiltNetwork):
        missing = (set(layers) - {o.name for o in module.desc.ops} - {o.output for o in module.desc.ops}
                   - {o.name + HEADS for o in module.desc.ops if o.kind == "attention"})
        if missing:
            raise KeyError(f"no layer named {sorted(missing)}")
        return module(*inputs, capture=list(layers))[1]
    captured, hooks = {}, []
    for name in layers:
        sub = module.get_submodule(name)
        hooks.append(sub.register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out[0] if isinstance(out, tuple) else out)))
    try:
        module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return captured
