"""Measure SpectralMonitor's training-step overhead on a small GPT-like model (CPU), posting to a loopback sink.

Usage: python bench/monitor_overhead.py [--every 10] [--steps 100] [--repeats 3]. Two copies of the model train in
lockstep on the same batches, one with the monitor and one without, alternating which goes first; so a shared
machine's changing load hits both alike. Prints one JSON object with, per clock (training-thread CPU, wall), the
median ms/step without the monitor and, with it, of monitored and other steps, with the amortised overhead at
``every``; the paired overhead (sum of the monitored copy's step times over the plain copy's, minus 1; per run, and
the median over cycles of ``every`` steps, which one preempted step cannot move much); the poster
thread's CPU (the process's CPU less the training thread's, up to the end of ``monitor.close()``) per monitored step,
and the whole-process overhead that includes it. Figures are medians over the repeats; the load average is printed
before and after. The sink runs in another process, so its CPU is not counted. With ``--accuracy`` it also reports
how far the monitor's v1 is from a full SVD's (degrees, over layers and monitored steps of a 300-step run).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from torch import nn

from weightscope import WeightscopeClient
from weightscope.monitor import SpectralMonitor


class Sink(BaseHTTPRequestHandler):
    """Accepts every telemetry post with 202."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(202)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(nn.functional.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab=97, d=128, layers=4, heads=4, ctx=64):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(ctx, d))
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.blocks(self.emb(idx) + self.pos[: idx.shape[1]]))


def run(steps: int, every: int, url: str, warmup: int = 5) -> dict:
    """Train the two copies ``steps`` steps after ``warmup`` steps; per-step times (s) and the poster's CPU (s)."""
    models, opts = [], []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(GPT())
        opts.append(torch.optim.AdamW(models[-1].parameters(), lr=1e-3))
    monitor = SpectralMonitor(models[1], "bench", client=WeightscopeClient(url), every=every)
    data = torch.randint(0, 97, (steps + warmup, 16, 65))
    times: dict[str, list[float]] = {f"{clock}_{side}": [] for clock in ("thread", "wall") for side in ("plain", "monitored")}
    for i in range(steps + warmup):
        if i == warmup:
            process0, thread0 = time.process_time(), time.thread_time()
        x, y = data[i, :, :-1], data[i, :, 1:]
        for side in ((0, 1) if i % 2 else (1, 0)):  # alternate the order: neither copy always runs on a warm cache
            t0, w0 = time.thread_time(), time.perf_counter()
            loss = nn.functional.cross_entropy(models[side](x).reshape(-1, 97), y.reshape(-1))
            loss.backward()
            if side:
                monitor.step(loss)
            opts[side].step()
            opts[side].zero_grad()
            if i >= warmup:
                name = "monitored" if side else "plain"
                times[f"thread_{name}"].append(time.thread_time() - t0)
                times[f"wall_{name}"].append(time.perf_counter() - w0)
    assert monitor.close(timeout=30)
    # the process's CPU less the training thread's: the poster thread (encoding, HTTP) and anything else it started
    times["poster_cpu"] = (time.process_time() - process0) - (time.thread_time() - thread0)
    times["monitored_steps"] = [i for i in range(warmup, steps + warmup) if i % every == 0]
    times["warmup"] = warmup
    return times


def accuracy(steps: int, every: int, url: str) -> dict:
    """Angles (degrees) between the monitor's v1 and a full SVD's, over every layer and monitored step but the first
    (a cold start): how much the warm-started iteration's budget and tolerance cost in precision."""
    torch.manual_seed(0)
    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = SpectralMonitor(model, "bench", client=WeightscopeClient(url), every=every)
    data = torch.randint(0, 97, (steps, 16, 65))
    angles = []
    for i in range(steps):
        x, y = data[i, :, :-1], data[i, :, 1:]
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 97), y.reshape(-1))
        loss.backward()
        if i % every == 0 and i > 0:
            for tap in monitor.taps:
                v1 = torch.linalg.svd(tap.matrix().detach().double())[2][0]
                cos = abs(float(tap.top.v.double() @ v1)) / float(tap.top.v.double().norm())
                angles.append(math.degrees(math.acos(min(1.0, cos))))
        monitor.step(loss)
        opt.step()
        opt.zero_grad()
    assert monitor.close(timeout=30)
    angles.sort()
    return {"layer_steps": len(angles), "median": round(statistics.median(angles), 4),
            "p90": round(angles[int(0.9 * len(angles))], 3), "p99": round(angles[int(0.99 * len(angles))], 2),
            "max": round(angles[-1], 2)}


def _ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 2)


def _summary(runs: list[dict], every: int) -> dict:
    out: dict = {}
    for clock in ("thread", "wall"):
        plain, mon, other, paired, cycles = [], [], [], [], []
        for r in runs:
            steps = range(r["warmup"], r["warmup"] + len(r[f"{clock}_plain"]))
            flags = [i % every == 0 for i in steps]
            plain += r[f"{clock}_plain"]
            mon += [t for t, f in zip(r[f"{clock}_monitored"], flags) if f]
            other += [t for t, f in zip(r[f"{clock}_monitored"], flags) if not f]
            paired.append(sum(r[f"{clock}_monitored"]) / sum(r[f"{clock}_plain"]) - 1)
            # whole cycles of `every` steps (one monitored step each): a preempted step spoils one cycle only
            first = next(k for k, f in enumerate(flags) if f)
            for c in range(first, len(flags) - every + 1, every):
                cycles.append(sum(r[f"{clock}_monitored"][c:c + every]) / sum(r[f"{clock}_plain"][c:c + every]) - 1)
        b, m, o = _ms(plain), _ms(mon), _ms(other)
        out[f"{clock}_ms_per_step"] = {
            "without_monitor": b, "monitored_steps": m, "other_steps": o,
            "amortised_overhead_pct": round(100 * ((m + (every - 1) * o) / every / b - 1), 2),
            "paired_overhead_pct": round(100 * statistics.median(paired), 2),
            "paired_overhead_pct_runs": [round(100 * p, 2) for p in paired],
            "paired_cycle_overhead_pct_median": round(100 * statistics.median(cycles), 2),
            "cycles": len(cycles)}
    poster = [r["poster_cpu"] / len(r["monitored_steps"]) for r in runs]
    process = [(sum(r["thread_monitored"]) + r["poster_cpu"]) / sum(r["thread_plain"]) - 1 for r in runs]
    out["poster_thread_cpu_ms_per_monitored_step"] = _ms(poster)
    out["process_cpu_overhead_pct"] = round(100 * statistics.median(process), 2)
    out["process_cpu_overhead_pct_runs"] = [round(100 * p, 2) for p in process]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--accuracy", action="store_true",
                        help="also report the angle between the monitor's v1 and a full SVD's (300 steps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ready = multiprocessing.Queue()
    sink = multiprocessing.Process(target=_serve, args=(ready,), daemon=True)  # its CPU is not ours
    sink.start()
    url = f"http://127.0.0.1:{ready.get(timeout=30)}"
    out: dict = {"every": args.every, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                 "torch": torch.__version__, "load_before": [round(x, 2) for x in os.getloadavg()]}
    # the training thread's CPU time is the robust number on a shared machine (with one intra-op thread it is all
    # the compute the step waits for); wall time moves with the load
    runs = [run(args.steps, args.every, url) for _ in range(args.repeats)]
    out.update(_summary(runs, args.every))
    if args.accuracy:
        out["v1_angle_to_svd_deg"] = accuracy(300, args.every, url)
    sink.terminate()
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out), flush=True)


def _serve(ready) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    ready.put(server.server_address[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
