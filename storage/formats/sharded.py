"""Sharded Hugging Face checkpoints: `model.safetensors.index.json` plus the shard files it names."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import InvalidBundle

INDEX_SUFFIX = ".index.json"
MAX_INDEX_BYTES = 50_000_000


def is_index(filename: str) -> bool:
    return filename.endswith(INDEX_SUFFIX)


def check_filename(filename: str) -> str:
    """Upload file names must be bare base names: no folders, no traversal, nothing hidden or odd."""
    if (
        not filename
        or len(filename) > 255
        or filename in (".", "..")
        or any(c in filename for c in "/\\\x00")
        or filename.startswith(".")
        or any(ord(c) < 32 for c in filename)
    ):
        raise InvalidBundle(f"file name {filename!r} must be a plain base name without path parts")
    return filename


@dataclass
class ShardIndex:
    weight_map: dict[str, str]  # tensor name -> shard file name
    metadata: dict

    @property
    def shards(self) -> list[str]:
        return list(dict.fromkeys(self.weight_map.values()))


def parse_index(raw: bytes) -> ShardIndex:
    if len(raw) > MAX_INDEX_BYTES:
        raise InvalidBundle(f"shard index is {len(raw)} bytes, over the limit of {MAX_INDEX_BYTES}")
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidBundle(f"shard index is not valid UTF-8 JSON ({exc})") from None
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidBundle("shard index needs a non-empty weight_map object")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise InvalidBundle(f"shard index maps tensor {name!r} to a non-string")
        try:
            check_filename(shard)
        except InvalidBundle:
            raise InvalidBundle(f"shard index maps tensor {name!r} to {shard!r}, outside the uploaded folder") from None
    metadata = parsed.get("metadata") or {}
    return ShardIndex(dict(weight_map), metadata if isinstance(metadata, dict) else {})


def check_bundle(index: ShardIndex, files: dict[str, set[str]]) -> None:
    """`files` maps each uploaded shard file name to the tensor names it holds; all must agree with the index."""
    missing = [s for s in index.shards if s not in files]
    if missing:
        raise InvalidBundle(f"shard index names {', '.join(map(repr, missing))}, which was not uploaded")
    extra = [f for f in files if f not in set(index.shards)]
    if extra:
        raise InvalidBundle(f"uploaded file {extra[0]!r} is not named by the shard index")
    seen: dict[str, str] = {}
    for shard, names in files.items():
        for name in names:
            if name in seen:
                raise InvalidBundle(f"tensor {name!r} appears in both {seen[name]!r} and {shard!r}")
            seen[name] = shard
            if index.weight_map.get(name) != shard:
                raise InvalidBundle(f"tensor {name!r} is in {shard!r} but the index places it in {index.weight_map.get(name)!r}")
    absent = [n for n in index.weight_map if n not in seen]
    if absent:
        raise InvalidBundle(f"shard index lists tensor {absent[0]!r}, which no shard holds")
