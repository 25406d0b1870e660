"""Validity benchmark of the loss-explosion early warning (issue 5): does SA collapse warn before a loss explosion?

A small nanoGPT-style character model is trained on the ASCII text of Python's own standard-library sources, in
runs meant to explode (learning rate far too high without warmup, no normalisation with a large learning rate,
low-precision attention, a sudden learning-rate jump) and runs meant to stay stable. Every run is watched by the
real client-side ``SpectralMonitor`` (its records go to an in-process stand-in for the server client) and the
records are judged by the real server-side ``DetectorSet`` with default configs. Runs are labelled by what happened
(see ``explosion_step``), not by intent. Prints one JSON object: per-run rows and, per detector, recall on the
exploded runs, false alarms on the others, and lead times in steps.

    PYTHONPATH=. .venv-b/bin/python bench/sa_validity.py --preset cpu-smoke
    PYTHONPATH=. python bench/sa_validity.py --preset full --device cuda
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script, bench/metanets.py would shadow the metanets package

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from metanets.detectors import DetectorSet  # noqa: E402
from weightscope import SpectralMonitor  # noqa: E402
from weightscope.client import Run  # noqa: E402

DETECTOR_NAMES = ("sa_collapse", "grad_norm_spike", "loss_spike", "weight_norm_growth")

# explosion rule (see explosion_step)
EXPLOSION_FACTOR = 1.5
EXPLOSION_WINDOW = 100
EXPLOSION_MIN_STEP = 20


# -- corpus ------------------------------------------------------------------------------------------------------------
def load_corpus(max_bytes: int) -> str:
    """The first ``max_bytes`` characters of the stdlib's ``.py`` files (sorted paths, site-packages skipped), with
    non-ASCII characters dropped: a deterministic text that ships with every Python."""
    root = os.path.dirname(os.__file__)
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    parts, total = [], 0
    for path in sorted(paths):
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("ascii", errors="ignore")
        except OSError:
            continue
        parts.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    return "".join(parts)[:max_bytes]


# -- model -------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPTConfig:
    """Size and the two switches that matter here: LayerNorm on/off and bf16 attention."""

    vocab_size: int = 97
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    norm: bool = True
    bf16_attention: bool = False


def _bf16_round(z: torch.Tensor) -> torch.Tensor:
    """Round to bfloat16 and back (gradients pass through unchanged, as they do through a dtype cast)."""
    return z.bfloat16().float()


class Block(nn.Module):
    """Pre-LN transformer block (LayerNorms replaced by identity when ``norm`` is off)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_embd
        self.cfg = cfg
        self.ln1 = nn.LayerNorm(d) if cfg.norm else nn.Identity()
        self.ln2 = nn.LayerNorm(d) if cfg.norm else nn.Identity()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.register_buffer("mask", torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool)),
                             persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Causal multi-head attention. With ``bf16_attention`` every tensor of the attention core (q, k, v, scores,
        probabilities, output) is rounded to bfloat16, float32 accumulation in between: the numerics of a bf16
        attention kernel, emulated so that it is fast on CPUs without bf16 matmul and identical on every device."""
        b, t, d = x.shape
        h = self.cfg.n_head
        low = _bf16_round if self.cfg.bf16_attention else (lambda z: z)
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (low(z.view(b, t, h, d // h).transpose(1, 2)) for z in (q, k, v))
        att = low((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h)))
        att = low(att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(dim=-1))
        y = low(att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Token + position embeddings, blocks, optional final LayerNorm, unembedding tied to the token embedding."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd) if cfg.norm else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


# -- runs --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One training run: model switches, optimiser schedule, and what the run is meant to do."""

    name: str
    intended: str  # "diverge" or "stable"
    cause: str
    lr: float
    warmup: int = 0
    norm: bool = True
    bf16_attention: bool = False
    jump_step: int | None = None  # lr multiplied by jump_factor from this step on
    jump_factor: float = 1.0
    ramp_to: float | None = None  # lr grows geometrically from ``lr`` (at the end of warmup) to this at the last step
    seed: int = 0


@dataclass(frozen=True)
class Preset:
    """Model size, run length, monitoring cadence and the run list."""

    name: str
    model: GPTConfig
    batch_size: int
    steps: int
    every: int
    corpus_bytes: int
    threads: int
    runs: tuple[RunSpec, ...]
    horizon: int  # a warning counts as a hit if it comes at most this many steps before the explosion (or at it)
    after_explosion: int = 20  # steps trained past the explosion step before stopping


def _runs(jump_at: int, nonorm_lrs: tuple[float, float, float]) -> tuple[RunSpec, ...]:
    """The run list: 8 meant to stay stable, 10 meant to explode. ``nonorm_lrs`` are the large learning rates of the
    runs without normalisation (what explodes depends on the model size, see reference/sa-probe.md)."""
    lo, mid, hi = nonorm_lrs
    return (
        RunSpec("ln_lr1e-3_wu_s0", "stable", "-", 1e-3, warmup=50, seed=0),
        RunSpec("ln_lr1e-3_wu_s1", "stable", "-", 1e-3, warmup=50, seed=1),
        RunSpec("ln_lr1e-3_wu_s2", "stable", "-", 1e-3, warmup=50, seed=2),
        RunSpec("ln_lr3e-4_wu", "stable", "-", 3e-4, warmup=50),
        RunSpec("ln_lr3e-3_wu", "stable", "-", 3e-3, warmup=50),
        RunSpec("nonorm_lr3e-4_wu", "stable", "-", 3e-4, warmup=50, norm=False),
        RunSpec("nonorm_lr1e-3_wu", "stable", "-", 1e-3, warmup=50, norm=False, seed=1),
        RunSpec("ln_bf16attn_lr1e-3_wu", "stable", "-", 1e-3, warmup=50, bf16_attention=True),
        RunSpec("ln_lr3e-2_nowu", "diverge", "lr far too high, no warmup", 3e-2),
        RunSpec("ln_lr1e-1_nowu", "diverge", "lr far too high, no warmup", 1e-1, seed=1),
        RunSpec(f"nonorm_lr{lo:g}_nowu", "diverge", "no normalisation, large lr", lo, norm=False),
        RunSpec(f"nonorm_lr{mid:g}_nowu", "diverge", "no normalisation, large lr", mid, norm=False),
        RunSpec(f"nonorm_lr{hi:g}_nowu", "diverge", "no normalisation, large lr", hi, norm=False, seed=1),
        RunSpec(f"nonorm_bf16attn_lr{mid:g}_nowu", "diverge", "bf16 attention, no normalisation, large lr", mid,
                norm=False, bf16_attention=True, seed=2),
        RunSpec("ln_bf16attn_lr1e-1_nowu", "diverge", "bf16 attention, lr far too high", 1e-1, bf16_attention=True),
        RunSpec("ln_lr_jump_x50", "diverge", "lr x50 mid-run", 1e-3, warmup=50, jump_step=jump_at, jump_factor=50.0),
        RunSpec("ln_lr_jump_x20", "diverge", "lr x20 mid-run", 1e-3, warmup=50, jump_step=jump_at, jump_factor=20.0,
                seed=1),
        RunSpec("nonorm_lr_jump_x30", "diverge", "lr x30 mid-run, no normalisation", 1e-3, warmup=50, norm=False,
                jump_step=jump_at, jump_factor=30.0),
    )


def _cpu_runs(seeds: tuple[int, ...]) -> tuple[RunSpec, ...]:
    """The CPU preset's run list, per seed: 4 meant to stay stable, 5 meant to explode, of which 3 reach their too-high
    learning rate gradually (a ramp: the realistic case where an early warning has something to see)."""
    runs: list[RunSpec] = []
    for s in seeds:
        runs += [
            RunSpec(f"ln_lr1e-3_wu_s{s}", "stable", "-", 1e-3, warmup=50, seed=s),
            RunSpec(f"ln_lr3e-3_wu_s{s}", "stable", "-", 3e-3, warmup=50, seed=s),
            RunSpec(f"nonorm_lr1e-3_wu_s{s}", "stable", "-", 1e-3, warmup=50, norm=False, seed=s),
            RunSpec(f"ln_bf16attn_lr1e-3_wu_s{s}", "stable", "-", 1e-3, warmup=50, bf16_attention=True, seed=s),
            RunSpec(f"nonorm_lr2e-2_nowu_s{s}", "diverge", "no normalisation, large lr", 2e-2, norm=False, seed=s),
            RunSpec(f"ln_ramp_to_3e-1_s{s}", "diverge", "lr ramps far too high", 1e-3, warmup=50, ramp_to=0.3, seed=s),
            RunSpec(f"nonorm_ramp_to_5e-2_s{s}", "diverge", "no normalisation, lr ramps too high", 1e-3, warmup=50,
                    ramp_to=0.05, norm=False, seed=s),
            RunSpec(f"ln_bf16attn_ramp_to_3e-1_s{s}", "diverge", "bf16 attention, lr ramps far too high", 1e-3,
                    warmup=50, ramp_to=0.3, bf16_attention=True, seed=s),
            RunSpec(f"ln_lr_jump_x50_s{s}", "diverge", "lr x50 mid-run", 1e-3, warmup=50, jump_step=300,
                    jump_factor=50.0, seed=s),
        ]
    return tuple(runs)


PRESETS = {
    "cpu-smoke": Preset("cpu-smoke", GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64), batch_size=16,
                        steps=400, every=5, corpus_bytes=2_000_000, threads=1, horizon=100,
                        runs=_runs(jump_at=200, nonorm_lrs=(1.5e-2, 2e-2, 3e-2))),
    "cpu": Preset("cpu", GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64), batch_size=16, steps=600, every=5,
                  corpus_bytes=2_000_000, threads=1, horizon=100, runs=_cpu_runs((0, 1, 2))),
    "cpu-wide": Preset("cpu-wide", GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128), batch_size=16,
                       steps=600, every=5, corpus_bytes=2_000_000, threads=1, horizon=100, runs=_cpu_runs((0,))),
    "full": Preset("full", GPTConfig(block_size=128, n_layer=4, n_head=8, n_embd=256), batch_size=32, steps=1500,
                   every=5, corpus_bytes=10_000_000, threads=8, horizon=200,
                   runs=_runs(jump_at=600, nonorm_lrs=(3e-3, 1e-2, 3e-2))),
}


class CollectingClient:
    """In-process stand-in for WeightscopeClient: ``post_telemetry`` (as the poster calls it) keeps the records."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self._lock = threading.Lock()

    def post_telemetry(self, run_id: str, records: list[dict], timeout: float | None = None) -> dict:
        with self._lock:
            self.records.extend(records)
        return {"accepted": len(records)}


def explosion_step(losses: list[float]) -> int | None:
    """The explosion step: the first step t >= EXPLOSION_MIN_STEP whose loss is non-finite or exceeds
    EXPLOSION_FACTOR times the minimum loss of the previous EXPLOSION_WINDOW steps; None if there is none."""
    for t in range(EXPLOSION_MIN_STEP, len(losses)):
        x = losses[t]
        if not math.isfinite(x):
            return t
        prev = [v for v in losses[max(0, t - EXPLOSION_WINDOW):t] if math.isfinite(v)]
        if prev and x > EXPLOSION_FACTOR * min(prev):
            return t
    return None


def lr_at(spec: RunSpec, step: int, steps: int) -> float:
    """Linear warmup over ``warmup`` steps, then constant (or a geometric ramp to ``ramp_to`` at step ``steps``),
    times ``jump_factor`` from ``jump_step`` on."""
    lr = spec.lr * min(1.0, (step + 1) / spec.warmup) if spec.warmup else spec.lr
    if spec.ramp_to is not None and step > spec.warmup:
        lr = spec.lr * (spec.ramp_to / spec.lr) ** ((step - spec.warmup) / max(1, steps - spec.warmup))
    if spec.jump_step is not None and step >= spec.jump_step:
        lr *= spec.jump_factor
    return lr


def train_run(spec: RunSpec, preset: Preset, data: torch.Tensor, vocab: int, device: str) -> tuple[list[float], list[dict], float]:
    """Train one run under the monitor; return its losses, the monitor's telemetry records and the seconds taken."""
    torch.manual_seed(spec.seed)
    cfg = replace(preset.model, vocab_size=vocab, norm=spec.norm, bf16_attention=spec.bf16_attention)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    client = CollectingClient()
    monitor = SpectralMonitor(model, Run(client=client, id=spec.name), every=preset.every, scalars_every=1,
                              include=r"^blocks\.", seed=spec.seed)
    gen = torch.Generator().manual_seed(1000 + spec.seed)
    t_block, b = cfg.block_size, preset.batch_size
    offsets = torch.arange(t_block + 1)
    losses: list[float] = []
    t0 = time.perf_counter()
    stop_at = preset.steps
    for step in range(preset.steps):
        if step >= stop_at:
            break
        starts = torch.randint(0, data.numel() - t_block - 1, (b,), generator=gen)
        chunk = data[starts[:, None] + offsets].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(spec, step, preset.steps)
        loss = model(chunk[:, :-1], chunk[:, 1:])
        loss.backward()
        monitor.step(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break  # nothing after a non-finite loss is informative
        if stop_at == preset.steps:
            ex = explosion_step(losses)
            if ex is not None:
                stop_at = min(preset.steps, ex + preset.after_explosion)
    monitor.close(timeout=30.0)
    seconds = time.perf_counter() - t0
    return losses, client.records, seconds


def judge_run(spec: RunSpec, losses: list[float], records: list[dict], detector_spec: dict | None = None,
              seconds: float | None = None) -> dict:
    """Feed a run's records to the real detectors; return the run's row (explosion step, warnings per detector)."""
    detectors = DetectorSet.from_spec(detector_spec)
    warnings = detectors.ingest(records)
    first: dict[str, int | None] = {name: None for name in DETECTOR_NAMES}
    steps_by_detector: dict[str, list[int]] = {name: [] for name in DETECTOR_NAMES}
    for w in warnings:
        steps_by_detector[w.detector].append(w.step)
        if first[w.detector] is None or w.step < first[w.detector]:
            first[w.detector] = w.step
    ex = explosion_step(losses)
    finite = [v for v in losses if math.isfinite(v)]
    return {
        **asdict(spec),
        "exploded": ex is not None,
        "explosion_step": ex,
        "steps_trained": len(losses),
        "min_loss": round(min(finite), 4) if finite else None,
        "final_loss": round(losses[-1], 4) if math.isfinite(losses[-1]) else str(losses[-1]),
        "loss_at_explosion": (None if ex is None else
                              (round(losses[ex], 4) if math.isfinite(losses[ex]) else str(losses[ex]))),
        "first_warning": first,
        "warning_steps": {name: sorted(v) for name, v in steps_by_detector.items()},
        "records": len(records),
        "seconds": None if seconds is None else round(seconds, 1),
    }


def summarise(rows: list[dict], horizon: int) -> dict:
    """Per detector, over the runs that exploded: a *hit* is a warning in [explosion - horizon, explosion]; lead =
    explosion step minus the first such warning; ``early_warning_runs`` warned before that window (a warning that
    far ahead is not counted as a prediction). Over the runs that did not explode: a false alarm is any warning.
    ``recall_any_before`` counts any warning at or before the explosion, however early."""
    exploded = [r for r in rows if r["exploded"]]
    stable = [r for r in rows if not r["exploded"]]
    out: dict = {}
    for name in DETECTOR_NAMES:
        leads, early, late, anytime = {}, [], [], 0
        for r in exploded:
            ex, steps = r["explosion_step"], r["warning_steps"][name]
            window = [s for s in steps if ex - horizon <= s <= ex]
            if window:
                leads[r["name"]] = ex - window[0]
            if any(s < ex - horizon for s in steps):
                early.append(r["name"])
            if any(s <= ex for s in steps):
                anytime += 1
            elif steps:
                late.append(r["name"])
        alarms = [r["name"] for r in stable if r["warning_steps"][name]]
        out[name] = {
            "recall": round(len(leads) / len(exploded), 3) if exploded else None,
            "hits": len(leads), "n_exploded": len(exploded),
            "median_lead_steps": statistics.median(leads.values()) if leads else None,
            "lead_steps": leads,
            "false_alarms": len(alarms), "n_not_exploded": len(stable), "false_alarm_runs": alarms,
            "early_warning_runs": early,
            "warned_only_after_explosion": late,
            "recall_any_before": round(anytime / len(exploded), 3) if exploded else None,
        }
    sa = out["sa_collapse"]
    others = [out[n]["median_lead_steps"] for n in ("grad_norm_spike", "weight_norm_growth")]
    out["goal"] = {
        "sa_recall_at_least_0.8": sa["recall"] is not None and sa["recall"] >= 0.8,
        "sa_no_false_alarm": sa["false_alarms"] == 0,
        "sa_median_lead_beats_grad_norm_and_weight_norm": (
            sa["median_lead_steps"] is not None
            and all(o is None or sa["median_lead_steps"] > o for o in others)),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the preset's)")
    parser.add_argument("--only", default=None, help="comma-separated run names (debugging)")
    parser.add_argument("--save", default=None, help="write every run's losses and telemetry here (.json.gz)")
    parser.add_argument("--replay", default=None, help="judge the runs saved by --save instead of training")
    parser.add_argument("--detectors", default=None,
                        help="detector settings as in POST /v1/runs {detectors} (JSON); default: all, default configs")
    args = parser.parse_args(argv)
    detector_spec = json.loads(args.detectors) if args.detectors else None
    preset = PRESETS[args.preset]
    threads = args.threads or min(preset.threads, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()

    text = load_corpus(preset.corpus_bytes)
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    runs = preset.runs if args.only is None else tuple(r for r in preset.runs if r.name in args.only.split(","))

    rows, saved = [], []
    if args.replay:
        with gzip.open(args.replay, "rt") as fh:
            collected = json.load(fh)
        if collected["preset"] != preset.name:
            parser.error(f"{args.replay} holds preset {collected['preset']!r}, not {preset.name!r}")
        known = {r.name: r for r in preset.runs}
        todo = [(known[c["name"]], c["losses"], c["records"], c["seconds"]) for c in collected["runs"]
                if c["name"] in {r.name for r in runs}]
    else:
        todo = ((spec, *train_run(spec, preset, data, len(chars), args.device)) for spec in runs)
    for spec, losses, records, seconds in todo:
        row = judge_run(spec, losses, records, detector_spec, seconds)
        rows.append(row)
        saved.append({"name": spec.name, "losses": losses, "records": records, "seconds": seconds})
        print(f"{spec.name:28s} exploded={row['exploded']!s:5s} at={row['explosion_step']} "
              f"min={row['min_loss']} final={row['final_loss']} warn={row['warning_steps']} {row['seconds']}s",
              file=sys.stderr, flush=True)
    if args.save:
        with gzip.open(args.save, "wt") as fh:
            json.dump({"preset": preset.name, "runs": saved}, fh)

    result = {
        "benchmark": "sa_validity",
        "preset": preset.name,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": threads, "device": args.device,
                    "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
                    "torch": torch.__version__, "python": platform.python_version()},
        "setup": {"model": asdict(replace(preset.model, vocab_size=len(chars))), "batch_size": preset.batch_size,
                  "steps": preset.steps, "monitor_every": preset.every, "scalars_every": 1,
                  "corpus_chars": len(text), "optimizer": "AdamW betas (0.9, 0.95), wd 0.1, no clipping",
                  "detectors": detector_spec or "DetectorSet.from_spec(None): all four with default configs",
                  "hit_horizon_steps": preset.horizon,
                  "explosion_rule": (f"first step t >= {EXPLOSION_MIN_STEP} with non-finite loss or loss > "
                                     f"{EXPLOSION_FACTOR} x min(loss over the previous {EXPLOSION_WINDOW} steps)")},
        "runs": rows,
        "summary": summarise(rows, preset.horizon),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
