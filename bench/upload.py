"""Upload benchmark: server peak RSS while uploading a large safetensors file, and upload throughput over
loopback against a plain fsynced copy of the same bytes to disk, measured in the same run. Prints JSON.

    python bench/upload.py [--rss-gib 2] [--throughput-gib 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.formats import safetensors as stf  # noqa: E402


def make_safetensors(path: Path, gib: float) -> int:
    """A file of float32 matrices (64 MiB each) totalling about `gib` GiB, written in pieces."""
    per = 4096 * 4096
    count = max(1, round(gib * (1 << 30) / (per * 4)))
    specs = [(f"layers.{i}.weight", "F32", (4096, 4096)) for i in range(count)]
    g = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(stf.header_bytes(specs, None))
        for _ in specs:
            f.write(stf.tensor_bytes(torch.randn(4096, 4096, generator=g)))
    return path.stat().st_size


def plain_copy_seconds(src: Path, dest_dir: Path) -> float:
    """The peer: copy the bytes to a file on the same disk and fsync, as the upload path does."""
    dest = dest_dir / "copy.bin"
    start = time.perf_counter()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`weightscope-server serve` in its own process, with its peak RSS sampled every 10 ms."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        env = {**os.environ, "WEIGHTSCOPE_DATA_DIR": str(data_dir), "WEIGHTSCOPE_WORKERS": "0",
               "WEIGHTSCOPE_MAX_UPLOAD_BYTES": str(64 << 30), "PYTHONPATH": str(ROOT), **(env or {})}
        env.pop("WEIGHTSCOPE_DATABASE_URL", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
        self.ps = psutil.Process(self.proc.pid)
        self.peak = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.ps.memory_info().rss)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def reset_peak(self) -> None:
        self.peak = self.rss()

    def close(self) -> None:
        self._stop.set()
        self.proc.terminate()
        self.proc.wait(30)


def upload(url: str, path: Path) -> tuple[float, dict]:
    def body():
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/checkpoints", content=body(), headers={"content-length": str(path.stat().st_size)}, timeout=3600)
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed, r.json()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-gib", type=float, default=2.0)
    parser.add_argument("--throughput-gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where files and the server's data go (same disk)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ws-bench-", dir=args.workdir))
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                 "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1), "python": platform.python_version()}}
    try:
        big = work / "big.safetensors"
        big_size = make_safetensors(big, args.rss_gib)
        server = Server(work / "data")
        try:
            idle = server.rss()
            server.reset_peak()
            seconds, body = upload(server.url, big)
            time.sleep(0.05)
            results["peak_rss"] = {"file_bytes": big_size, "server_rss_idle_mb": round(idle / 1e6, 1),
                                   "server_rss_peak_mb": round(server.peak / 1e6, 1), "upload_seconds": round(seconds, 2),
                                   "tensors": body["tensor_count"], "target_mb": 300}
            big.unlink()
            httpx.delete(f"{server.url}/v1/checkpoints/{body['id']}")

            src = work / "one.safetensors"
            size = make_safetensors(src, args.throughput_gib)
            uploads, copies = [], []
            for i in range(args.repeats):
                copies.append(plain_copy_seconds(src, work))
                seconds, body = upload(server.url, src)
                uploads.append(seconds)
                httpx.delete(f"{server.url}/v1/checkpoints/{body['id']}")
                subprocess.run([sys.executable, "-m", "app.cli", "gc", "--grace", "0"], cwd=work, check=True, capture_output=True,
                               env={**os.environ, "WEIGHTSCOPE_DATA_DIR": str(work / "data"), "PYTHONPATH": str(ROOT)})
            best_upload, best_copy = min(uploads), min(copies)
            results["throughput"] = {
                "file_bytes": size,
                "upload_seconds": [round(s, 3) for s in uploads],
                "copy_seconds": [round(s, 3) for s in copies],
                "upload_mb_s": round(size / best_upload / 1e6, 1),
                "copy_mb_s": round(size / best_copy / 1e6, 1),
                "upload_over_copy": round(best_copy / best_upload, 3),
                "target_ratio": 0.5,
            }
        finally:
            server.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
