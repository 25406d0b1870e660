"""Builders for checkpoint files in every accepted format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import safetensors.torch
import torch


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return safetensors.torch.save(tensors, metadata=metadata)


def torch_bytes(obj, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def sharded_files(tensors: dict[str, torch.Tensor], shards: int = 2) -> list[tuple[str, bytes]]:
    """A Hugging Face sharded folder: shard files plus model.safetensors.index.json."""
    names = list(tensors)
    files, weight_map = [], {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        files.append((fname, safetensors_bytes(part)))
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}, "weight_map": weight_map}
    files.append(("model.safetensors.index.json", json.dumps(index).encode()))
    return files


def multipart(files: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (name, data, "application/octet-stream")) for name, data in files]


def load_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(data)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
