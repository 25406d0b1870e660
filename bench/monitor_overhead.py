"""Measure SpectralMonitor's training-step overhead on a small GPT-like model (CPU), posting to a loopback sink.

Usage: python bench/monitor_overhead.py [--every 10] [--steps 100]. Prints median ms/step without the monitor,
and with it for monitored and other steps.
"""

from __future__ import annotations

import argparse
import multiprocessing
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


def run(steps: int, monitor_every: int | None, url: str, clock) -> tuple[list[float], list[float]]:
    """Train ``steps`` steps (after 5 warm-up steps); return the step times (s, by ``clock``) of monitored and
    other steps."""
    torch.manual_seed(0)
    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = None
    if monitor_every:
        monitor = SpectralMonitor(model, "bench", client=WeightscopeClient(url), every=monitor_every)
    data = torch.randint(0, 97, (steps + 5, 16, 65))
    monitored, other = [], []
    for i in range(steps + 5):
        t0 = clock()
        x, y = data[i, :, :-1], data[i, :, 1:]
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 97), y.reshape(-1))
        loss.backward()
        if monitor:
            monitor.step(loss)
        opt.step()
        opt.zero_grad()
        if i >= 5:
            (monitored if monitor_every and i % monitor_every == 0 else other).append(clock() - t0)
    if monitor:
        assert monitor.close(timeout=30)
    return monitored, other


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ready = multiprocessing.Queue()
    sink = multiprocessing.Process(target=_serve, args=(ready,), daemon=True)  # its CPU is not ours
    sink.start()
    url = f"http://127.0.0.1:{ready.get(timeout=30)}"
    # the training thread's CPU time is the robust number on a shared machine (with one intra-op thread it is all
    # the compute the step waits for; the poster thread works in the background); wall time moves with the load
    for label, clock in (("wall", time.perf_counter), ("training-thread CPU", time.thread_time)):
        base, mon_steps, mon_other = [], [], []
        for _ in range(args.repeats):  # interleaved, so drift of a shared machine hits both sides
            base += run(args.steps, None, url, clock)[1]
            m, o = run(args.steps, args.every, url, clock)
            mon_steps += m
            mon_other += o
        b, m, o = (1000 * statistics.median(t) for t in (base, mon_steps, mon_other))
        mean_with = (m + (args.every - 1) * o) / args.every
        print(f"{label}: median ms/step without monitor {b:.1f}; with monitor every={args.every}: monitored steps "
              f"{m:.1f}, other steps {o:.1f}; amortised overhead {100 * (mean_with / b - 1):+.1f}%", flush=True)
    sink.terminate()


def _serve(ready) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    ready.put(server.server_address[1])
    server.serve_forever()

if __name__ == "__main__":
    main()
