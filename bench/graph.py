"""Benchmark: build time and peak memory of description plus parameter graph for large random-initialised models.

Prints one JSON object. Time is measured on one CPU thread; peak memory is the largest resident-set growth during
the build (sampled every millisecond), compared with the bytes of the graph's own tensors.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script, this file's folder (bench/metanets.py) would shadow the metanets package

import torch  # noqa: E402

from metanets import describe, to_graph  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Samples the resident set size in a background thread; ``peak`` is the largest value seen."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _models():
    def resnet18():
        from torchvision.models import resnet18

        return resnet18(weights=None), None

    def resnet50():
        from torchvision.models import resnet50

        return resnet50(weights=None), None

    def vit_b16():
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False), {"num_heads": 12}

    def gpt2():
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config()), {"num_heads": 12}

    return {"resnet18": resnet18, "resnet50": resnet50, "vit_b16": vit_b16, "gpt2_small": gpt2}


def bench(name: str, make, mode: str, repeats: int) -> dict:
    model, hints = make()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    del model
    gc.collect()
    times = []
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            desc = describe(sd, hints)
            t1 = time.perf_counter()
            data = to_graph(desc, sd, mode=mode)
            t2 = time.perf_counter()
        graph_bytes = sum(v.numel() * v.element_size() for v in data.to_dict().values() if isinstance(v, torch.Tensor))
        times.append((t1 - t0, t2 - t1, mem.peak - mem.base))
        result = {"num_nodes": int(data.num_nodes), "num_edges": int(data.num_edges), "graph_bytes": graph_bytes}
        del data, desc
        gc.collect()
    best = min(times, key=lambda t: t[0] + t[1])
    params = len({t.data_ptr() for t in sd.values()}) and sum(
        t.numel() for t in {t.data_ptr(): t for t in sd.values() if t.is_floating_point()}.values())
    return {"model": name, "mode": mode, "parameters": params, **result,
            "describe_s": round(best[0], 4), "graph_s": round(best[1], 4), "total_s": round(best[0] + best[1], 4),
            "peak_rss_growth_bytes": max(t[2] for t in times),
            "peak_over_graph_bytes": round(max(t[2] for t in times) / result["graph_bytes"], 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(_models()))
    parser.add_argument("--mode", default="scalar", choices=["scalar", "vector"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    makers = _models()
    results = [bench(n, makers[n], args.mode, args.repeats) for n in args.models]
    print(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                  "threads": args.threads, "torch": torch.__version__},
                      "targets": {"resnet18_total_s": 1.0, "gpt2_small_total_s": 10.0, "peak_over_graph_bytes": 1.5},
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
