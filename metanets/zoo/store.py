"""On-disk zoo: ``recipe.json``, one safetensors file per member, ``chunks/<k>.json`` as resume markers, and
``labels.json`` listing every member (id, run, file, labels, metadata)."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import MetanetError
from .recipe import ZooMember, ZooRecipe


def _write_json(path: Path, data) -> None:
    """Atomic write through a temporary file of its own, so processes sharing a zoo folder never collide."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=1))
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the zoo's files are readable as before
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # nothing half-written left behind
        raise


def open_store(out_dir: str | Path, recipe: ZooRecipe) -> Path:
    """Create the zoo folder, or check that an existing one was made from the same recipe (any size)."""
    out = Path(out_dir)
    (out / "members").mkdir(parents=True, exist_ok=True)
    (out / "chunks").mkdir(exist_ok=True)
    path = out / "recipe.json"
    if path.exists():
        old = ZooRecipe(**json.loads(path.read_text()))
        if old.fingerprint() != recipe.fingerprint():
            raise MetanetError(f"{out} holds a zoo of a different recipe ({old.to_json()}); use another folder")
    _write_json(path, recipe.to_json())
    return out


def finished_chunk(out: Path, k: int, units: range) -> list[ZooMember] | None:
    """The members of chunk ``k`` if it was completed before for exactly these units, else None."""
    path = out / "chunks" / f"{k}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data["units"] != [units.start, units.stop]:
        return None
    members = [ZooMember(**m) for m in data["members"]]
    return members if all((out / m.file).exists() for m in members) else None


def save_chunk(out: Path, k: int, units: range, items: list[tuple[ZooMember, dict[str, torch.Tensor]]]) -> None:
    """Write the members' weights, then the chunk marker (so a crash never leaves a marker without weights)."""
    for member, sd in items:
        tmp = out / (member.file + ".tmp")
        save_file(sd, str(tmp), metadata={"member": member.id, "order": json.dumps(list(sd))})
        os.replace(tmp, out / member.file)
    _write_json(out / "chunks" / f"{k}.json",
                {"units": [units.start, units.stop], "members": [asdict(m) for m, _ in items]})


def write_labels(out: Path, recipe: ZooRecipe, members: list[ZooMember]) -> None:
    _write_json(out / "labels.json", {"recipe": recipe.to_json(), "members": [asdict(m) for m in members]})


def load_zoo(out_dir: str | Path) -> tuple[ZooRecipe, list[ZooMember]]:
    """The recipe and members listed in ``labels.json``."""
    path = Path(out_dir) / "labels.json"
    if not path.exists():
        raise MetanetError(f"no zoo at {out_dir} (labels.json missing)")
    data = json.loads(path.read_text())
    return ZooRecipe(**data["recipe"]), [ZooMember(**m) for m in data["members"]]


def load_member(out_dir: str | Path, member: ZooMember) -> dict[str, torch.Tensor]:
    """The member's state dict, in the key order of the module it came from (safetensors sorts keys)."""
    return ordered_state_dict(Path(out_dir) / member.file)


def ordered_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors in the module key order kept in its metadata ("order"), when it has one."""
    with safe_open(str(path), "pt") as f:
        order = json.loads((f.metadata() or {}).get("order", "[]"))
    sd = load_file(str(path))
    return {k: sd[k] for k in order} if sorted(order) == sorted(sd) else sd
