"""Server-side Spectral Alignment of a rebuilt checkpoint on a probe batch (the `spectral_alignment` job).

Measured matrices (d_out x d_in), the tokens (rows of d_in) aligned with their top right singular vector v1, and the
layer name each record carries: the module name the client's SpectralMonitor uses, so that hook-sent and
server-computed series of a layer line up.

- `linear`: the weight, transposed when stored (in, out) (GPT-2 Conv1D); tokens: every position of the op's input.
- `conv` (groups 1, 1-D to 3-D): the weight reshaped to (out, in * k...); tokens: every input patch, taken with the
  op's stride, padding ("same" and "valid" included) and dilation, zero padding being part of a patch (as in the
  monitor). Patches come from `F.unfold` (1-D, 2-D) or strided windows (3-D), only for the sampled positions.
- `attention`: the input projections read the attention op's input. A packed `qkv_weight` is measured whole (GPT-2
  `c_attn`, timm `qkv`: one module, one monitor tap), except `nn.MultiheadAttention`'s `in_proj_weight`, measured as
  its q, k and v row blocks; separate `q/k/v_weight` one each (grouped-query k/v included). The output projection
  `o_weight` reads the concatenated heads before it (`metanets.runnable.HEADS` capture).
- Names: the weight's key less `.weight` (`transformer.h.0.attn.c_attn`, `model.layers.0.self_attn.o_proj`,
  `features.3`), and `<module>.in_proj_q` / `_k` / `_v` for `in_proj_weight`, as the monitor names them. When the key
  does not end in `.weight`, or the weight was placed by an earlier op (a module called twice), the op's name is used
  (`<op>`; attention roles `<op>.qkv`, `<op>.q`, `.k`, `.v`, `.o`); a repeat gets `#2`, `#3`.
- Biases never enter input-space SA: bias-free layers are measured the same way.

Skipped, and listed in the job result as {layer, op, kind, reason}: ops holding a table that no input vector
multiplies (`embedding`, `add_embedding`, `add_positions`, `cls_token`), linear read-outs tied to such a table (the
monitor skips tied embeddings by default too), grouped convolutions, any op kind without a rule here that holds a
matrix, and an op whose measurement raises. Ops holding no matrix (norms, activations, pools...) are not layers.

Conventions of `weightscope.spectral`: v1 from `top_singular` (cold start, largest entry positive: the server has no
previous step to keep its sign continuous, so `sa_pos_frac` and the quantiles may flip sign between checkpoints where
the monitor's would not; `sa_sign_diversity` is sign-free), uncentered inputs, zero rows give SA 0. At most
``max_tokens`` tokens per matrix (patches count as tokens), drawn uniformly without replacement by a generator seeded
from the layer name, so a layer's sample depends neither on the other layers nor on the power iteration.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from metanets.architecture.description import ArchitectureDescription, Op
from metanets.runnable import HEADS, RebuiltNetwork

# ops whose parameters are per-channel vectors or constants: not matrices, never SA layers, never "skipped"
_NO_MATRIX = {"batchnorm", "layernorm", "rmsnorm", "groupnorm", "layerscale", "act", "add", "mul", "maxpool", "avgpool",
              "adaptive_avgpool", "flatten", "to_tokens", "select_token", "mean_tokens", "identity", "dropout"}
_TABLES = {"embedding", "add_embedding", "add_positions", "cls_token"}
_ROW_CHUNK = 1 << 16  # SA rows converted to float64 at a time
_PATCH_CHUNK = 1 << 24  # unfolded patch elements materialised at a time
# power iteration: the server has no previous step to warm-start from, but has time; top_singular computes in
# float64 up to 4M entries (tight tolerance reachable) and in float32 above (its rounding floor is ~1e-7)
_POWER_ITERS = 2000
_FLOAT64_ENTRIES = 4_000_000


@dataclass
class Matrix:
    """One measured matrix: the record's layer name, the op and weight role it comes from, and its input value."""

    layer: str
    op: Op
    role: str
    source: str  # capture name of the input: a value name, or "<attention op>:heads"
    rows: slice | None = None  # a row block of the (d_out, d_in) matrix (nn.MultiheadAttention's packed q, k, v)

    def matrix(self, net: RebuiltNetwork) -> torch.Tensor:
        w = net.tensor(self.op, self.role).detach()
        if self.op.kind == "conv":
            return w.reshape(w.shape[0], -1)
        w = w.t() if self.op.attrs.get("transposed") else w
        return w if self.rows is None else w[self.rows]


@dataclass
class Measured:
    layer: str
    op: str
    kind: str
    sa: torch.Tensor  # SA values of the sampled tokens, float64 (float32 for matrices above 4M entries)
    sigma1: float
    weight_norm: float


def _module(key: str | None) -> str | None:
    return key[: -len(".weight")] if key and key.endswith(".weight") and len(key) > len(".weight") else None


def plan(desc: ArchitectureDescription) -> tuple[list[Matrix], list[dict]]:
    """The matrices to measure, in program order, and the skipped ops ({layer, op, kind, reason})."""
    kinds = {op.name: op.kind for op in desc.ops}
    matrices: list[Matrix] = []
    skipped: list[dict] = []
    used: set[str] = set()

    def owner(op: Op, role: str) -> str | None:
        """The op that placed the tensor (another op's name for a shared weight)."""
        spec = desc.tensors.get(op.params.get(role, ""))
        return spec.op if spec is not None else None

    def add(op: Op, role: str, source: str, fallback: str, preferred: str | None, rows: slice | None = None):
        name = preferred if preferred and owner(op, role) == op.name and preferred not in used else fallback
        n = 2
        while name in used:
            name, n = f"{fallback}#{n}", n + 1
        used.add(name)
        matrices.append(Matrix(name, op, role, source, rows))

    def skip(op: Op, reason: str, layer: str | None = None) -> None:
        key = next((k for r, k in op.params.items() if r.endswith("weight")), None)
        skipped.append({"layer": layer or _module(key) or op.name, "op": op.name, "kind": op.kind, "reason": reason})

    for op in desc.ops:
        if op.kind == "linear":
            tied = owner(op, "weight")
            if tied != op.name and kinds.get(tied) in _TABLES:
                skip(op, f"read-out tied to the {kinds[tied]} {tied!r}: not measured (the client monitor skips "
                         "tied embeddings by default)", layer=op.name)
            else:
                add(op, "weight", op.inputs[0], op.name, _module(op.params["weight"]))
        elif op.kind == "conv":
            if op.attrs.get("groups", 1) != 1:
                skip(op, "grouped convolution: no single matrix acts on a patch")
            else:
                add(op, "weight", op.inputs[0], op.name, _module(op.params["weight"]))
        elif op.kind == "attention":
            x, key = op.inputs[0], op.params.get("qkv_weight")
            if key is not None and key.endswith("in_proj_weight"):  # nn.MultiheadAttention: the monitor's slices
                base, width = key[: -len("in_proj_weight")], _out_features(desc, op, "qkv_weight") // 3
                for i, r in enumerate("qkv"):
                    add(op, "qkv_weight", x, f"{op.name}.{r}", f"{base}in_proj_{r}", slice(i * width, (i + 1) * width))
            elif key is not None:  # packed and measured whole, as the monitor hooks the module (c_attn, qkv)
                add(op, "qkv_weight", x, f"{op.name}.qkv", _module(key))
            else:
                for r in "qkv":
                    add(op, f"{r}_weight", x, f"{op.name}.{r}", _module(op.params[f"{r}_weight"]))
            add(op, "o_weight", op.name + HEADS, f"{op.name}.o", _module(op.params["o_weight"]))
        elif op.kind in _NO_MATRIX:
            continue
        elif op.kind in _TABLES:
            skip(op, f"{op.kind}: a lookup table, no input vectors to align")
        elif any(len(desc.tensors[k].shape) >= 2 and not desc.tensors[k].buffer
                 for k in op.params.values() if k in desc.tensors):
            skip(op, f"no spectral-alignment rule for op kind {op.kind!r}")
    return matrices, skipped


def _out_features(desc: ArchitectureDescription, op: Op, role: str) -> int:
    shape = desc.tensors[op.params[role]].shape
    return shape[1] if op.attrs.get("transposed") else shape[0]


def _generator(layer: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(layer.encode()))


def _sample(count: int, max_tokens: int, generator: torch.Generator) -> torch.Tensor | None:
    """Sorted indices of at most ``max_tokens`` of ``count`` tokens, uniformly without replacement; None for all."""
    if count <= max_tokens:
        return None
    return torch.randperm(count, generator=generator)[:max_tokens].sort().values


def _pair(value, nd: int) -> list[int]:
    return [int(value)] * nd if isinstance(value, (int, float)) else [int(v) for v in value]


@dataclass
class _ConvGeometry:
    kernel: list[int]
    stride: list[int]
    dilation: list[int]
    pads: list[tuple[int, int]]  # (before, after) zeros per spatial axis
    out: list[int]  # output positions per spatial axis

    @classmethod
    def of(cls, spatial, kernel, stride=1, padding=0, dilation=1) -> _ConvGeometry:
        nd = len(kernel)
        stride, dilation = _pair(stride, nd), _pair(dilation, nd)
        if padding == "valid":
            pads = [(0, 0)] * nd
        elif padding == "same":  # as torch pads it: the odd element after
            pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
        else:
            pads = [(p, p) for p in _pair(padding, nd)]
        out = [max(0, (s + a + b - d * (k - 1) - 1) // st + 1)
               for s, (a, b), k, st, d in zip(spatial, pads, kernel, stride, dilation)]
        return cls(list(kernel), stride, dilation, pads, out)

    @property
    def positions(self) -> int:
        return math.prod(self.out)


def conv_patches(x: torch.Tensor, kernel: list[int], stride=1, padding=0, dilation=1,
                 index: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """The input patches of a groups=1 convolution over ``x`` (N, C, *spatial), in chunks of rows of C * prod(kernel)
    features ordered like ``weight.reshape(out, -1)``; rows in (sample, output position) order, only the flat row
    numbers in ``index`` (sorted) when given. 1-D and 2-D use ``F.unfold``; 3-D the same windows from strided views.
    Zero padding is part of the patches, as it is of the layer's input.
    """
    g = _ConvGeometry.of(x.shape[2:], kernel, stride, padding, dilation)
    positions, n, features = g.positions, x.shape[0], x.shape[1] * math.prod(kernel)
    if positions == 0:
        return
    kernel, stride, dilation, pads = g.kernel, g.stride, g.dilation, g.pads
    if len(kernel) == 3 or any(a != b for a, b in pads):  # asymmetric ("same") or 3-D: pad explicitly
        x = F.pad(x, [p for pair in reversed(pads) for p in pair])
        pads = [(0, 0)] * len(kernel)
    if len(kernel) == 3:  # F.unfold is 2-D only: the windows of each axis from Tensor.unfold, dilation by slicing
        windows = x
        for axis, (k, st, d) in enumerate(zip(kernel, stride, dilation)):
            windows = windows.unfold(2 + axis, d * (k - 1) + 1, st)[..., ::d]
        windows = windows.permute(0, 2, 3, 4, 1, 5, 6, 7)  # (N, o1, o2, o3, C, k1, k2, k3), a view
        flat = torch.arange(n * positions) if index is None else index
        for rows in flat.split(max(1, _PATCH_CHUNK // features)):
            yield windows[torch.unravel_index(rows, (n, *g.out))].reshape(len(rows), features)
        return
    if len(kernel) == 1:  # as 2-D with a height-1 kernel
        x, kernel, stride, dilation, pads = x.unsqueeze(2), [1, *kernel], [1, *stride], [1, *dilation], [(0, 0), *pads]
    per_chunk = max(1, _PATCH_CHUNK // (features * positions))
    for start in range(0, n, per_chunk):
        stop = min(n, start + per_chunk)
        if index is not None:
            lo, hi = torch.searchsorted(index, torch.tensor([start * positions, stop * positions])).tolist()
            if lo == hi:
                continue
            rows = index[lo:hi] - start * positions
        cols = F.unfold(x[start:stop], kernel, dilation=dilation, padding=[a for a, _ in pads], stride=stride)
        patches = cols.transpose(1, 2).reshape(-1, features)  # (chunk * positions, C * prod(kernel))
        yield patches if index is None else patches[rows]


def _token_rows(x: torch.Tensor, width: int, index: torch.Tensor | None) -> Iterator[torch.Tensor]:
    rows = x.reshape(-1, width)
    rows = rows if index is None else rows[index]
    yield from rows.split(_ROW_CHUNK)


def measure(net: RebuiltNetwork, inputs: tuple[torch.Tensor, ...], max_tokens: int,
            progress: Callable[[float], None] | None = None) -> tuple[list[Measured], list[dict]]:
    """SA values of every measurable matrix of ``net`` on ``inputs``; the skipped ops with reasons.

    ``progress(fraction)`` is called after the forward pass and after each matrix.
    """
    from weightscope.spectral import alignment, top_singular

    desc = net.desc
    matrices, skipped = plan(desc)
    with torch.no_grad():
        _, values = net(*inputs, capture=sorted({m.source for m in matrices}))
    values.update({spec.name: x for spec, x in zip(desc.inputs, inputs)})
    if progress:
        progress(0.2)
    results = []
    for i, m in enumerate(matrices):
        try:
            results.append(_measure_one(net, m, values[m.source], max_tokens, alignment, top_singular))
        except (RuntimeError, ValueError, KeyError, IndexError) as exc:
            skipped.append({"layer": m.layer, "op": m.op.name, "kind": m.op.kind,
                            "reason": f"measurement failed: {type(exc).__name__}: {exc}"})
        if progress:
            progress(0.2 + 0.75 * (i + 1) / len(matrices))
    return results, skipped


def _measure_one(net, m: Matrix, x: torch.Tensor, max_tokens: int, alignment, top_singular) -> Measured:
    weight = m.matrix(net).detach()
    generator = _generator(m.layer)  # token sample; the power iteration's start has its own, so v1 does not
    x = x.detach()
    if m.op.kind == "conv":
        kernel = list(net.tensor(m.op, "weight").shape[2:])
        if x.dim() == len(kernel) + 1:  # unbatched
            x = x.unsqueeze(0)
        a = m.op.attrs
        g = _ConvGeometry.of(x.shape[2:], kernel, a.get("stride", 1), a.get("padding", 0), a.get("dilation", 1))
        index = _sample(x.shape[0] * g.positions, max_tokens, generator)
        chunks = conv_patches(x, kernel, a.get("stride", 1), a.get("padding", 0), a.get("dilation", 1), index)
    else:
        index = _sample(x.numel() // weight.shape[1], max_tokens, generator)
        chunks = _token_rows(x, weight.shape[1], index)
    tol = 1e-10 if weight.numel() <= _FLOAT64_ENTRIES else 1e-6
    top = top_singular(weight, max_iters=_POWER_ITERS, tol=tol, generator=_generator(m.layer))
    parts = [alignment(c.to(top.v.dtype), top.v) for c in chunks]
    sa = torch.cat(parts) if parts else torch.empty(0, dtype=top.v.dtype)
    return Measured(m.layer, m.op.name, m.op.kind, sa, float(top.sigma),
                    float(torch.linalg.vector_norm(weight.to(top.v.dtype))))
