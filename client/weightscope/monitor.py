"""SpectralMonitor: per-layer Spectral Alignment telemetry from forward hooks, posted in the background.

Usage (plain PyTorch)::

    monitor = SpectralMonitor(model, client.start_run("gpt-small"), every=10)
    for batch in loader:
        loss = model(batch); loss.backward()
        monitor.step(loss)            # after backward, before zero_grad
        opt.step(); opt.zero_grad()
    monitor.close()

On a monitored step (step % every == 0) the first captured forward computes the top singular vectors of all
monitored weights at once (Lanczos, warm-started from the previous monitored step, sign kept continuous; see
``top_singular_batch``), and each hook computes the SA value of every input token: at most ``max_tokens`` per layer and
step, sampled uniformly from each forward while the budget lasts (under gradient accumulation the first micro-batches
fill it). ``step()`` then summarises all layers in one batch with one host sync. Other steps cost one Python call
per hook. Only training-mode forwards are captured.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .client import Run, WeightscopeClient, telemetry_record
from .poster import TelemetryPoster
from .spectral import (
    DEFAULT_EPS, DEFAULT_HIST_BINS, DEFAULT_QUANTILES, TopSingular, sa_summary_table, summary_names, top_singular_batch,
)

log = logging.getLogger("weightscope")

STEP_LAYER = "_step"
_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's GPT-2 style ``Conv1D``: a linear layer whose weight is stored (in, out)."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2
            and weight.shape[1] == getattr(module, "nf", None))


@dataclass
class _Tap:
    """One monitored matrix: how to get it from its module and where its SA values of this step accumulate."""

    name: str
    module: nn.Module
    kind: Literal["linear", "hf_conv1d", "conv", "mha"]
    mha_index: int = 0  # 0, 1, 2 = q, k, v slice of a packed MultiheadAttention in-projection
    prev_v: torch.Tensor | None = None
    top: TopSingular | None = None
    direction: torch.Tensor | None = None  # this step's v1 (or u1 for space="output") as float32, for the hooks
    chunks: list[torch.Tensor] = field(default_factory=list)
    tokens: int = 0

    def matrix(self) -> torch.Tensor:
        """The weight as a (d_out, d_in) matrix acting on one input token or patch."""
        m = self.module
        if self.kind == "linear":
            return m.weight
        if self.kind == "hf_conv1d":
            return m.weight.T
        if self.kind == "conv":
            return m.weight.reshape(m.weight.shape[0], -1)
        e = m.embed_dim
        if m._qkv_same_embed_dim:
            return m.in_proj_weight[self.mha_index * e:(self.mha_index + 1) * e]
        return (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)[self.mha_index]

    def reset(self) -> None:
        self.top = None
        self.direction = None
        self.chunks = []
        self.tokens = 0


class SpectralMonitor:
    """Attach SA hooks to ``model`` and post telemetry for ``run`` every ``every`` steps.

    ``run`` is a :class:`Run` (from ``client.start_run``/``client.run``) or a run id with ``client=``.
    ``space="input"`` pairs inputs with the right singular vector v1 (default, analyses.md B.3); ``"output"`` pairs
    outputs (bias included) with the left singular vector u1 (MultiheadAttention in-projections are then skipped).
    Layers: nn.Linear (attention projections included), Conv1d/2d/3d with groups=1, HF Conv1D, and the q/k/v
    slices of nn.MultiheadAttention (not its out_proj, whose input never leaves torch's attention function);
    ``include``/``exclude`` are regexes on module names; Linear layers whose weight
    is an nn.Embedding's weight (tied unembeddings) are skipped unless ``skip_tied_embeddings=False``.
    ``power_iters`` bounds the products with W^T W per monitored step (``max(power_iters, 200)`` on a cold start) and
    ``power_tol`` is the relative residual at which the singular vectors count as converged (see
    ``weightscope.spectral.top_singular_batch``; below 1e-5 they are computed in float64).
    """

    def __init__(
        self,
        model: nn.Module,
        run: Run | str,
        *,
        every: int = 10,
        client: WeightscopeClient | None = None,
        space: Literal["input", "output"] = "input",
        eps: float = DEFAULT_EPS,
        quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
        hist_bins: int = DEFAULT_HIST_BINS,
        max_tokens: int = 4096,
        power_iters: int = 20,
        power_tol: float = 1e-4,
        include: str | None = None,
        exclude: str | None = None,
        skip_tied_embeddings: bool = True,
        scalars_every: int | None = None,
        seed: int = 0,
        poster_options: Mapping[str, Any] | None = None,
    ):
        if every < 1:
            raise ValueError("every must be >= 1")
        if space not in ("input", "output"):
            raise ValueError("space must be 'input' or 'output'")
        if isinstance(run, Run):
            client, run_id = run.client, run.id
        else:
            run_id = str(run)
            if client is None:
                raise ValueError("pass client= when run is an id")
        self.model = model
        self.run_id = run_id
        self.every = every
        self.scalars_every = scalars_every or every
        self.space = space
        self.eps = eps
        self.quantiles = tuple(quantiles)
        self.hist_bins = hist_bins
        self.max_tokens = max_tokens
        self.power_iters = power_iters
        self.power_tol = power_tol
        self.poster = TelemetryPoster(client, run_id, **dict(poster_options or {}))
        self._generator = torch.Generator().manual_seed(seed)
        self._step = 0
        self._tops_ready = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.taps: list[_Tap] = self._select(model, include, exclude, skip_tied_embeddings)
        for tap in self.taps:
            self._attach(tap)

    # -- layer selection and hooks ---------------------------------------------------------------------------
    def _select(self, model: nn.Module, include: str | None, exclude: str | None, skip_tied: bool) -> list[_Tap]:
        embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        # MultiheadAttention applies out_proj's weight inside F.multi_head_attention_forward: its hooks never run
        hidden = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        taps: list[_Tap] = []
        for name, module in model.named_modules():
            if include is not None and not re.search(include, name):
                continue
            if exclude is not None and re.search(exclude, name):
                continue
            if isinstance(module, nn.Linear):
                if id(module) in hidden:
                    continue
                if not (skip_tied and id(module.weight) in embedding_weights):
                    taps.append(_Tap(name, module, "linear"))
            elif _is_hf_conv1d(module):
                taps.append(_Tap(name, module, "hf_conv1d"))
            elif type(module) in _CONVS and module.groups == 1:
                taps.append(_Tap(name, module, "conv"))
            elif isinstance(module, nn.MultiheadAttention) and self.space == "input":
                taps.extend(_Tap(f"{name}.in_proj_{p}", module, "mha", i) for i, p in enumerate("qkv"))
        return taps

    def _attach(self, tap: _Tap) -> None:
        if tap.kind == "mha":
            if tap.mha_index == 0:  # one hook feeds the three slices of this module
                slices = [t for t in self.taps if t.module is tap.module]
                self._handles.append(tap.module.register_forward_pre_hook(
                    lambda mod, args, kwargs: self._on_mha(slices, args, kwargs), with_kwargs=True))
        elif self.space == "input":
            self._handles.append(tap.module.register_forward_pre_hook(lambda mod, args: self._on_input(tap, args)))
        else:
            self._handles.append(tap.module.register_forward_hook(lambda mod, args, out: self._on_output(tap, out)))

    @property
    def capturing(self) -> bool:
        """Whether forwards of the current step are monitored."""
        return self._step % self.every == 0

    def _active(self, module: nn.Module) -> bool:
        return self.capturing and module.training and torch.is_grad_enabled()

    def _ensure_tops(self) -> None:
        """This step's top singular triples of every tap's matrix, all in one batched Lanczos run (warm-started from
        the previous monitored step's vectors), computed at the step's first captured forward."""
        if self._tops_ready:
            return
        with torch.no_grad():
            tops = top_singular_batch(
                [tap.matrix().detach() for tap in self.taps], [tap.prev_v for tap in self.taps],
                max_iters=[self.power_iters if tap.prev_v is not None else max(self.power_iters, 200)
                           for tap in self.taps],
                tol=self.power_tol, generator=self._generator)
        for tap, top in zip(self.taps, tops, strict=True):
            tap.top = top
            tap.direction = (top.u if self.space == "output" else top.v).to(torch.float32)
        self._tops_ready = True

    def _sample(self, tap: _Tap, rows: torch.Tensor) -> torch.Tensor | None:
        """Rows (tokens, or SA values) sampled uniformly down to the tap's remaining budget for this step (None when
        it is spent), so a large batch costs at most ``max_tokens`` dot products per layer."""
        room = self.max_tokens - tap.tokens
        if room <= 0:
            return None
        if rows.shape[0] > room:
            idx = torch.randperm(rows.shape[0], generator=self._generator)[:room].to(rows.device)
            rows = rows[idx]
        return rows

    def _keep(self, tap: _Tap, sa: torch.Tensor) -> None:
        sa = self._sample(tap, sa.reshape(-1))
        if sa is not None:
            tap.chunks.append(sa)
            tap.tokens += sa.numel()

    def _align_rows(self, tap: _Tap, x: torch.Tensor) -> None:
        """SA of the (sampled) rows of ``x`` (..., d) with the tap's direction, added to the tap's values (the rows
        are read in place: no copy of the activations unless they are sampled or not float32)."""
        rows = self._sample(tap, x.detach().reshape(-1, x.shape[-1]))
        if rows is None:
            return
        direction: torch.Tensor = tap.direction  # type: ignore[assignment]
        if direction.device != rows.device:
            direction = tap.direction = direction.to(rows.device)
        sa = _cosines(rows if rows.dtype == torch.float32 else rows.float(), direction)
        tap.chunks.append(sa)  # already within the tap's budget: the rows were sampled
        tap.tokens += sa.numel()

    def _on_input(self, tap: _Tap, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not self._active(tap.module):
            return
        with torch.no_grad():
            self._ensure_tops()
            if tap.kind == "conv":
                x = args[0].detach().float()
                self._keep(tap, _conv_alignment(tap.module, x, tap.direction.to(x.device)))  # type: ignore[union-attr]
            else:
                self._align_rows(tap, args[0])

    def _on_output(self, tap: _Tap, out: Any) -> None:
        if not isinstance(out, torch.Tensor) or not self._active(tap.module):
            return
        with torch.no_grad():
            self._ensure_tops()
            y = out
            if tap.kind == "conv":  # channels last: (N, C, *spatial) or unbatched (C, *spatial)
                y = y.movedim(1 if y.ndim == tap.module.weight.ndim else 0, -1)
            self._align_rows(tap, y)

    def _on_mha(self, slices: list[_Tap], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._active(slices[0].module):
            return
        names = ("query", "key", "value")
        inputs = [args[i] if i < len(args) else kwargs.get(names[i]) for i in range(3)]
        with torch.no_grad():
            self._ensure_tops()
            for tap, x in zip(slices, inputs, strict=True):
                if isinstance(x, torch.Tensor):
                    self._align_rows(tap, x)

    # -- step bookkeeping ------------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Declare the index of the step whose forwards follow (callbacks know it); drops stale captures."""
        if step != self._step:
            self._reset()
            self._step = int(step)

    def _reset(self) -> None:
        for tap in self.taps:
            tap.reset()
        self._tops_ready = False

    def step(self, loss: Any = None, *, step: int | None = None, grad_norm: float | None = None) -> None:
        """Finish a step: call after backward (gradients present). Sends the step's records if it is monitored.

        ``step`` defaults to the monitor's own counter (starting at 0); ``grad_norm`` defaults to the global L2 norm
        of the model's current gradients. The next step's index is ``step + 1``.
        """
        s = self._step if step is None else int(step)
        records: list[dict[str, Any]] = []
        if s % self.every == 0 and s == self._step:
            records.extend(self._layer_records(s))
        if s % self.scalars_every == 0:
            scalars: dict[str, float] = {}
            if loss is not None:
                scalars["loss"] = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
            gn = self.grad_norm() if grad_norm is None else float(grad_norm)
            if gn is not None:
                scalars["grad_norm"] = gn
            if scalars:
                records.append(telemetry_record(s, STEP_LAYER, scalars))
        self._reset()
        if records:
            self.poster.enqueue(records)
        self._step = s + 1

    def log_scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        """Send per-step scalars (layer ``_step``) outside ``step()``, e.g. a loss averaged by a trainer."""
        self.poster.enqueue([telemetry_record(step, STEP_LAYER, metrics)])

    def grad_norm(self) -> float | None:
        """Global L2 norm of the model's gradients (None if no parameter has one); NaN/Inf are reported as such."""
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return None
        groups: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            groups.setdefault(g.device, []).append(g)
        device = grads[0].device
        norms = torch.cat([_norms(group).to(device) for group in groups.values()])
        return float(torch.linalg.vector_norm(norms))

    def _layer_records(self, s: int) -> list[dict[str, Any]]:
        taps = [tap for tap in self.taps if tap.chunks and tap.top is not None]
        records = []
        if taps:
            with torch.no_grad():
                sas = [torch.cat(tap.chunks) if len(tap.chunks) > 1 else tap.chunks[0] for tap in taps]
                table = sa_summary_table(sas, eps=self.eps, quantiles=self.quantiles, hist_bins=self.hist_bins)
                weight_norms = _norms([tap.matrix().detach() for tap in taps]).to(table.device)
                sigmas = torch.tensor([tap.top.sigma for tap in taps], dtype=torch.float64)  # type: ignore[union-attr]
                rows = torch.cat([table, sigmas.to(table.device).unsqueeze(1), weight_norms.unsqueeze(1)], dim=1)
            names = [*summary_names(self.quantiles, self.hist_bins), "sigma1", "weight_norm"]
            for tap, row in zip(taps, rows.tolist(), strict=True):  # the one host sync of the step's layer metrics
                records.append(telemetry_record(s, tap.name, dict(zip(names, row, strict=True))))
        for tap in self.taps:  # warm starts for the next monitored step
            if tap.top is not None and math.isfinite(tap.top.sigma):
                tap.prev_v = tap.top.v
        return records

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> bool:
        """Remove the hooks and flush the poster for at most ``timeout`` seconds; True if everything was sent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return self.poster.close(timeout=timeout)

    def __enter__(self) -> SpectralMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cosines(rows: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """SA of each row of ``rows`` (n, d) with the unit vector ``direction``: ``alignment`` without its copies."""
    dots = rows @ direction
    norms = torch.linalg.vector_norm(rows, dim=1)
    return torch.where(norms == 0, 0.0, dots / norms)  # non-finite inputs stay non-finite


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norms of tensors on one device as one float64 vector, in order: reduced in float32 (float64 for float64
    tensors; half-precision ones are upcast while reduced), one fused kernel per dtype where torch has it."""
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    parts, order = [], []
    for dtype, idx in by_dtype.items():
        group = [tensors[i] for i in idx]
        wide = dtype in (torch.float32, torch.float64)
        try:
            norms = torch._foreach_norm(group, 2) if wide else torch._foreach_norm(group, 2, dtype=torch.float32)
        except (AttributeError, TypeError, RuntimeError):  # older torch: one reduction per tensor
            norms = [torch.linalg.vector_norm(t) if wide else torch.linalg.vector_norm(t, dtype=torch.float32)
                     for t in group]
        parts.append(torch.stack(list(norms)).to(torch.float64))
        order += idx
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if order != sorted(order):
        out = out[torch.tensor(order, device=out.device).argsort()]
    return out


def _conv_alignment(module: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SA of every input patch of a groups=1 convolution with v, without unfolding: two convolutions give
    <patch, v> and |patch| for all positions at once (zero-padded patches are real inputs of the layer)."""
    conv = _CONVS[type(module)]
    kernel_shape = module.weight.shape[1:]
    if x.ndim == len(kernel_shape):  # unbatched input
        x = x.unsqueeze(0)
    padding: Any = module.padding
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    kernel = v.reshape(1, *kernel_shape)
    dots = conv(x, kernel, None, module.stride, padding, module.dilation)
    sq = conv(x * x, torch.ones_like(kernel), None, module.stride, padding, module.dilation)
    norms = sq.clamp_min(0).sqrt()
    return torch.where(norms == 0, torch.zeros_like(dots), dots / norms)  # non-finite inputs stay non-finite
