"""Sandboxed child process: `python -m storage.formats.torch_loader SRC DEST MEMORY_LIMIT CPU_SECONDS`.

Sets its own resource limits before importing torch, loads SRC with `torch.load(weights_only=True)`, flattens
nested containers to dotted names and writes the tensors to DEST as safetensors. The last stdout line is a JSON
report: {"names", "metadata", "tied"} on success, {"error", "kind"} on refusal.
"""

from __future__ import annotations

import json
import resource
import sys


def _limit(kind: int, value: int) -> None:
    soft, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, hard))


def _flatten(value, prefix: str, tensors: dict, metadata: dict) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        tensors[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), tensors, metadata)
    elif isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}" if prefix else str(index), tensors, metadata)
    elif value is None or isinstance(value, (bool, int, float, str)):
        if prefix:
            metadata[prefix] = value


def _tied_groups(tensors: dict) -> list[list[str]]:
    """Names whose tensors are views of the same memory with the same layout (tied weights)."""
    groups: dict[tuple, list[str]] = {}
    for name, t in tensors.items():
        if t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def main(src: str, dest: str, memory_limit: int, cpu_seconds: int) -> dict:
    _limit(resource.RLIMIT_AS, memory_limit)
    _limit(resource.RLIMIT_CPU, cpu_seconds)
    _limit(resource.RLIMIT_CORE, 0)

    import os
    import pickle

    import torch

    from storage.formats import safetensors as st

    max_out = 4 * os.path.getsize(src) + (64 << 20)
    _limit(resource.RLIMIT_FSIZE, max_out + (1 << 20))
    try:
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("\n")
        detail = next((line.strip() for line in reason if "Unsupported" in line or "global" in line.lower()), reason[0])
        return {"kind": "unsafe", "error": f"refused by torch.load(weights_only=True): {detail}"[:2000]}
    except Exception as exc:  # corrupt archives raise many types; all mean "cannot load"
        return {"kind": "invalid", "error": f"PyTorch file could not be loaded: {type(exc).__name__}: {exc}"[:2000]}

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        # Lightning checkpoint: the weights are under state_dict; keep its scalar fields as metadata.
        metadata: dict = {}
        for key, item in obj.items():
            if key != "state_dict" and (item is None or isinstance(item, (bool, int, float, str))):
                metadata[str(key)] = item
        tensors: dict = {}
        _flatten(obj["state_dict"], "", tensors, {})
    else:
        tensors, metadata = {}, {}
        _flatten(obj, "", tensors, metadata)
    if not tensors:
        return {"kind": "invalid", "error": "PyTorch file holds no tensors"}

    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total > max_out:
        return {"kind": "invalid", "error": f"tensors would expand to {total} bytes, over the limit of {max_out}"}
    for name, t in tensors.items():
        if st.dtype_name(t.dtype) is None:
            return {"kind": "invalid", "error": f"tensor {name!r} has dtype {t.dtype}, which is not supported"}
        if t.layout != torch.strided or t.is_quantized:
            return {"kind": "invalid", "error": f"tensor {name!r} is sparse or quantized, which is not supported"}
    tied = _tied_groups(tensors)
    with open(dest, "wb") as out:
        st.write(out, list(tensors.items()))
    return {"names": list(tensors), "metadata": metadata, "tied": tied}


if __name__ == "__main__":
    src, dest, memory, cpu = sys.argv[1:5]
    report = main(src, dest, int(memory), int(cpu))
    print(json.dumps(report, default=str))
    sys.exit(0 if "names" in report else 2)
