"""Telemetry load benchmark against a running server (embedded defaults: SQLite, local blobs). Prints JSON.

1. Ingestion: SpectralMonitor-shaped records (16 layers x 25 metrics, plus per-step loss and grad norm), posted in
   batches of 512 by `--writers` concurrent clients, each with its own run, for `--seconds`; every detector on.
2. Polling: 100 dashboards each polling one run's warnings once a second, plain and with If-None-Match, driven
   by real HTTP load tools; latency percentiles from their reports:
   - burst: `hey -c 100 -q 1` (`apt-get install hey`) starts its 100 workers together, so the polls arrive in
     bursts of 100 each second;
   - spread: `wrk` (`apt-get install wrk`; skipped if absent) with each connection's first poll offset so that the
     100 dashboards are spread evenly over the second, as independent dashboards are.

    python bench/telemetry.py [--seconds 20] [--writers 2] [--dashboards 100] [--processes 1]

`--processes N` serves with N API processes (`weightscope-server serve --processes N`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from upload import Server  # noqa: E402  (same server launcher as the upload benchmark)

LAYERS = [f"blocks.{i}.{name}" for i in range(4) for name in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.out")]
QUANTILES = ("sa_q05", "sa_q25", "sa_q50", "sa_q75", "sa_q95")


def layer_record(step: int, layer: str, rng: random.Random) -> dict:
    metrics = {"sa_sign_diversity": rng.uniform(0.7, 1.0), "sa_pos_frac": rng.uniform(0.4, 0.6), "sa_abs_mean": rng.uniform(0, 0.2),
               "sa_count": 4096, "sa_nonfinite": 0, "sigma1": 3 + 0.001 * step, "weight_norm": 20 + 0.001 * step}
    metrics.update({q: rng.uniform(-1, 1) for q in QUANTILES})
    metrics.update({f"sa_hist_{i:02d}": 0.1 for i in range(10)})
    return {"step": step, "layer": layer, "metrics": metrics}


def writer(url: str, run_id: str, deadline: float, counts: list, index: int, errors: list) -> None:
    rng = random.Random(index)
    step = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            batch = []
            while len(batch) < 512:
                batch += [layer_record(step, layer, rng) for layer in LAYERS]
                batch.append({"step": step, "layer": "_step", "metrics": {"loss": 2 + rng.uniform(-0.05, 0.05), "grad_norm": 1 + rng.uniform(0, 0.1)}})
                step += 1
            r = client.post(f"/v1/runs/{run_id}/telemetry", json={"records": batch})
            if r.status_code != 200:
                errors.append(r.text[:200])
                return
            counts[index] += len(batch)


def ingestion(url: str, seconds: float, writers: int) -> dict:
    with httpx.Client(base_url=url) as client:
        runs = [client.post("/v1/runs", json={"name": f"load-{i}"}).json()["id"] for i in range(writers)]
    counts, errors = [0] * writers, []
    start = time.monotonic()
    threads = [threading.Thread(target=writer, args=(url, runs[i], start + seconds, counts, i, errors)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return {"writers": writers, "batch_records": 512, "seconds": round(elapsed, 1), "records": sum(counts),
            "records_per_second": round(sum(counts) / elapsed), "errors": errors[:3], "target_records_per_second": 2000,
            "runs": runs}


def hey(url: str, seconds: int, dashboards: int, headers: list[str]) -> dict:
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(dashboards), "-q", "1"]
    for header in headers:
        cmd += ["-H", header]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    latency = {m.group(1): float(m.group(2)) * 1000 for m in re.finditer(r"(\d+)% in ([\d.]+) secs", out)}
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"requests_per_second": rps, "status_codes": codes, "p50_ms": latency.get("50"), "p90_ms": latency.get("90"),
            "p99_ms": latency.get("99"), "target_p99_ms": 50}


SPREAD_LUA = """
-- One connection per dashboard, each polling once a second; first polls spread evenly over the first second.
local threads = 0
function setup(thread)
  thread:set("index", threads)
  threads = threads + 1
end
function init(args)
  per_thread, thread_count, sent = tonumber(args[1]), tonumber(args[2]), 0
end
function delay()
  sent = sent + 1
  if sent <= per_thread then
    return math.floor(((sent - 1) * thread_count + index) * 1000 / (per_thread * thread_count))
  end
  return 1000
end
"""
_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: int, dashboards: int, headers: list[str], script: Path) -> dict:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed: apt-get install wrk"}
    threads = 2
    cmd = ["wrk", "-t", str(threads), "-c", str(dashboards), "-d", f"{seconds}s", "--latency", "-s", str(script)]
    for header in headers:
        cmd += ["-H", header]
    out = subprocess.run(cmd + [url, "--", str(dashboards // threads), str(threads)], capture_output=True, text=True, check=True).stdout
    latency = {m.group(1): float(m.group(2)) * _WRK_UNITS[m.group(3)] for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "non_2xx_3xx": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(1) if errors else None,
            "p50_ms": latency.get("50"), "p90_ms": latency.get("90"), "p99_ms": latency.get("99"), "target_p99_ms": 50}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--dashboards", type=int, default=100)
    parser.add_argument("--processes", type=int, default=1, help="API processes serving the port")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("hey is not installed: apt-get install hey")

    work = Path(tempfile.mkdtemp(prefix="ws-bench-telemetry-", dir=args.workdir))
    server = Server(work / "data", env={"WEIGHTSCOPE_API_PROCESSES": str(args.processes)})
    try:
        result = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(), "database": "sqlite (embedded default)",
                              "load_average_at_start": os.getloadavg()}, "api_processes": args.processes}
        result["ingestion"] = ingest = ingestion(server.url, args.seconds, args.writers)
        run_id = ingest["runs"][0]
        with httpx.Client(base_url=server.url) as client:  # give the polled run some warnings to return
            spike = [{"step": 10_000_000 + i, "layer": "_step", "metrics": {"loss": 50.0 if i >= 5 else 2.0, "grad_norm": 1.0}} for i in range(10)]
            client.post(f"/v1/runs/{run_id}/telemetry", json={"records": spike})
            first = client.get(f"/v1/runs/{run_id}/warnings")
            etag = first.headers["etag"]
            result["polled_run"] = {"warnings": len(first.json()["items"]), "telemetry_records": ingest["records"] // args.writers}
        url = f"{server.url}/v1/runs/{run_id}/warnings"
        seconds = int(max(10, args.seconds))
        result["polling"] = hey(url, seconds, args.dashboards, [])
        result["polling_if_none_match"] = hey(url, seconds, args.dashboards, [f"If-None-Match: {etag}"])
        script = work / "spread.lua"
        script.write_text(SPREAD_LUA)
        result["polling_spread"] = wrk(url, seconds, args.dashboards, [], script)
        result["polling_spread_if_none_match"] = wrk(url, seconds, args.dashboards, [f"If-None-Match: {etag}"], script)
        result["machine"]["load_average_at_end"] = os.getloadavg()
        print(json.dumps(result, indent=2))
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
