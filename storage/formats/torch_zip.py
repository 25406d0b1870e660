"""PyTorch zip checkpoints (.pt, .pth, .bin, Lightning .ckpt): structural checks, then a sandboxed load.

The zip's central directory is checked here without unpickling anything. The pickle itself is loaded only by
`torch.load(weights_only=True)` in a separate, resource-limited process (`storage.formats.torch_loader`), which
writes the tensors out as safetensors. Nothing from the upload ever runs in the server process.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidCheckpoint, UnsafeCheckpoint, UnsupportedFormat

MAX_ENTRIES = 100_000
LOADER_TIMEOUT_S = 600


@dataclass
class LoadedTorchFile:
    """What the sandboxed loader reports: tensor names in order, scalars kept as metadata, tied groups."""

    names: list[str]
    metadata: dict[str, object] = field(default_factory=dict)
    tied: list[list[str]] = field(default_factory=list)


def check_zip(path: Path, max_unpacked: int) -> None:
    """Refuse zips that are not plain PyTorch archives: bombs, links, paths escaping one root, no data.pkl."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidCheckpoint(f"invalid PyTorch zip: {exc}") from None
    if not infos:
        raise UnsupportedFormat("zip file is empty, not a PyTorch checkpoint")
    if len(infos) > MAX_ENTRIES:
        raise InvalidCheckpoint(f"invalid PyTorch zip: {len(infos)} entries exceed the limit of {MAX_ENTRIES}")
    roots = set()
    unpacked = 0
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or ".." in parts or "\x00" in name:
            raise InvalidCheckpoint(f"invalid PyTorch zip: entry {name!r} has an unsafe path")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidCheckpoint(f"invalid PyTorch zip: entry {name!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise InvalidCheckpoint(f"invalid PyTorch zip: entry {name!r} is encrypted")
        roots.add(parts[0])
        unpacked += info.file_size
    if unpacked > max_unpacked:
        raise InvalidCheckpoint(f"invalid PyTorch zip: entries unpack to {unpacked} bytes, over the limit of {max_unpacked}")
    if len(roots) != 1:
        raise UnsupportedFormat("zip file is not a PyTorch checkpoint: its entries do not share one top-level folder")
    root = roots.pop()
    if not any(info.filename == f"{root}/data.pkl" for info in infos):
        raise UnsupportedFormat("zip file is not a PyTorch checkpoint: it has no data.pkl")


def load_to_safetensors(src: Path, dest: Path, *, timeout: float = LOADER_TIMEOUT_S, memory_limit: int | None = None) -> LoadedTorchFile:
    """Run the sandboxed loader on `src`, writing safetensors to `dest`. Raises a CheckpointRejected on refusal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")] if p)
    limit = memory_limit or (4 << 30) + 4 * src.stat().st_size
    cmd = [sys.executable, "-s", "-m", "storage.formats.torch_loader", str(src), str(dest), str(limit), str(int(timeout))]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, timeout=timeout, cwd=str(dest.parent), stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise InvalidCheckpoint(f"PyTorch file took longer than {timeout:.0f} s to load") from None
    report = _last_json_line(proc.stdout)
    if proc.returncode == 0 and report and "names" in report:
        return LoadedTorchFile(report["names"], report.get("metadata", {}), report.get("tied", []))
    if report and "error" in report:
        kind = {"unsafe": UnsafeCheckpoint, "unsupported": UnsupportedFormat}.get(report.get("kind"), InvalidCheckpoint)
        raise kind(report["error"])
    raise InvalidCheckpoint(f"PyTorch file could not be loaded (loader exited with status {proc.returncode})")


def _last_json_line(stdout: bytes) -> dict | None:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
