"""Compare two versions of SpectralMonitor in one process: three copies of bench/monitor_overhead.py's GPT train in
lockstep on the same batches (no monitor, the other version's monitor, this checkout's monitor), rotating their
order every step, so that a shared machine's load and cache state hit all three alike.

Usage: python bench/monitor_compare.py --other /path/to/other/client [--steps 300] [--every 10]. ``--other`` is a
folder holding a ``weightscope`` package (e.g. ``git archive <commit> client | tar -x -C /tmp/old`` gives
``/tmp/old/client``); it is loaded under another name. Prints one JSON object: per version the paired overhead
(sum of its training-thread CPU step times over the plain copy's, minus 1) and the median extra ms of monitored and
other steps over the plain copy's same step; and the load average.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from monitor_overhead import GPT, _serve  # bench/ is on the path when this script runs
from weightscope import WeightscopeClient
from weightscope.monitor import SpectralMonitor


def _load_other(path: str):
    """The ``weightscope`` package under ``path``, imported as ``weightscope_other``."""
    root = tempfile.mkdtemp(prefix="weightscope-other-")
    shutil.copytree(os.path.join(path, "weightscope"), os.path.join(root, "weightscope_other"))
    sys.path.insert(0, root)
    return importlib.import_module("weightscope_other.monitor"), importlib.import_module("weightscope_other")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", required=True, help="folder holding the other version's weightscope package")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    other_monitor, other_pkg = _load_other(args.other)
    ready = multiprocessing.Queue()
    sink = multiprocessing.Process(target=_serve, args=(ready,), daemon=True)
    sink.start()
    url = f"http://127.0.0.1:{ready.get(timeout=30)}"
    load_before = os.getloadavg()
    warmup, every = 5, args.every
    models, opts = [], []
    for _ in range(3):
        torch.manual_seed(0)
        models.append(GPT())
        opts.append(torch.optim.AdamW(models[-1].parameters(), lr=1e-3))
    monitors = [None,
                other_monitor.SpectralMonitor(models[1], "other", client=other_pkg.WeightscopeClient(url), every=every),
                SpectralMonitor(models[2], "this", client=WeightscopeClient(url), every=every)]
    data = torch.randint(0, 97, (args.steps + warmup, 16, 65))
    times: list[list[float]] = [[], [], []]
    for i in range(args.steps + warmup):
        x, y = data[i, :, :-1], data[i, :, 1:]
        for side in [(i + k) % 3 for k in range(3)]:
            t0 = time.thread_time()
            loss = nn.functional.cross_entropy(models[side](x).reshape(-1, 97), y.reshape(-1))
            loss.backward()
            if monitors[side] is not None:
                monitors[side].step(loss)
            opts[side].step()
            opts[side].zero_grad()
            if i >= warmup:
                times[side].append(time.thread_time() - t0)
    for m in monitors[1:]:
        assert m.close(timeout=30)
    sink.terminate()
    flags = [i % every == 0 for i in range(warmup, args.steps + warmup)]
    out: dict = {"every": every, "steps": args.steps, "plain_ms_median": round(1000 * statistics.median(times[0]), 2),
                 "load_before": [round(x, 2) for x in load_before]}
    for name, side in (("other", 1), ("this", 2)):
        extra = [b - a for a, b in zip(times[0], times[side])]
        out[name] = {
            "paired_overhead_pct": round(100 * (sum(times[side]) / sum(times[0]) - 1), 2),
            "monitored_step_extra_ms_median": round(1000 * statistics.median(e for e, f in zip(extra, flags) if f), 2),
            "other_step_extra_ms_median": round(1000 * statistics.median(e for e, f in zip(extra, flags) if not f), 3)}
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
