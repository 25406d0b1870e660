"""Architecture descriptions and parameter graphs of stored checkpoints, built by `metanets` and cached.

torch is imported here lazily: only requests for architectures and graphs load it into the API process
(uploads and listings never do), and it then runs single-threaded, as concurrency comes from requests."""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from storage import checkpoints
from storage.models import Checkpoint, GraphBlob

from .problems import Problem
from .services import Services

MAX_GRAPH_EDGES = 300_000_000


class ArchitectureInput(BaseModel):
    """What names and shapes cannot tell: small hints, or a whole declarative description."""

    model_config = ConfigDict(extra="forbid")

    hints: dict | None = Field(None, examples=[{"num_heads": 12}], description="e.g. family, num_heads, activation, input_shape")
    declarative: dict | None = Field(None, description="the program as JSON (see metanets/architecture/declarative.py)")

    def supplied(self) -> dict | None:
        data = self.model_dump(exclude_none=True)
        return data or None


@cache
def _torch():
    import torch

    torch.set_num_threads(1)
    return torch


def load_state_dict(path: Path) -> dict:
    _torch()
    from safetensors.torch import load_file

    return load_file(str(path))


def describe_file(path: Path, supplied: dict | None) -> dict:
    """The description of a canonical safetensors file as JSON; ArchitectureError becomes a 422 naming the tensors."""
    from metanets import ArchitectureError, describe

    supplied = supplied or {}
    try:
        description = describe(load_state_dict(path), hints=supplied.get("hints"), declarative=supplied.get("declarative"))
    except ArchitectureError as exc:
        problems = list(getattr(exc, "problems", []) or [str(exc)])
        raise Problem(422, "unrecognised-architecture", "; ".join(problems)[:4000], title="Architecture not understood",
                      problems=problems) from None
    return description.to_json()


def description(services: Services, checkpoint: Checkpoint) -> dict:
    """Cached description, rebuilt when the converter version changed."""
    from metanets import CONVERTER_VERSION

    cached = checkpoint.architecture
    if cached and cached.get("converter_version") == CONVERTER_VERSION:
        return cached
    built = describe_file(services.blobs.path(checkpoint.canonical_sha256), checkpoint.architecture_input)
    with services.writing() as session:
        checkpoints.cache_description(session, checkpoint.id, built)
    return built


def summarize_description(desc: dict) -> dict:
    groups = desc.get("groups", [])
    return {
        "family": desc.get("family"),
        "ops": len(desc.get("ops", [])),
        "tensors": len(desc.get("tensors", [])),
        "groups_by_kind": dict(Counter(g["kind"] for g in groups)),
        "permutable_groups": sum(1 for g in groups if g.get("permutable")),
    }


def graph(services: Services, checkpoint: Checkpoint, mode: str) -> GraphBlob:
    """The cached graph of a checkpoint in `mode`, building and storing it on first request."""
    from metanets import CONVERTER_VERSION

    with services.sessions() as session:
        row = checkpoints.graph(session, checkpoint.id, CONVERTER_VERSION, mode)
    if row is not None:
        return row
    torch = _torch()
    from metanets import ArchitectureDescription, expected_edges, to_graph
    from metanets.graph.types import ACTIVATION_TYPES, EDGE_TYPES, NODE_TYPES

    desc = ArchitectureDescription.from_json(description(services, checkpoint))
    expected = expected_edges(desc, mode)
    if sum(expected.values()) > MAX_GRAPH_EDGES:
        raise Problem(422, "graph-too-large", f"the {mode} graph would have {sum(expected.values())} edges, over the limit of {MAX_GRAPH_EDGES}")
    data = to_graph(desc, load_state_dict(services.blobs.path(checkpoint.canonical_sha256)), mode=mode)
    tensors = {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}
    node_types = torch.bincount(data.x[:, 0], minlength=len(NODE_TYPES)).tolist()
    edge_types = torch.bincount(data.edge_type.long(), minlength=len(EDGE_TYPES)).tolist()
    activations = torch.bincount(data.node_act, minlength=len(ACTIVATION_TYPES)).tolist()
    summary = {
        "mode": mode,
        "converter_version": CONVERTER_VERSION,
        "num_nodes": int(data.num_nodes),
        "num_edges": int(data.edge_index.shape[1]),
        "nodes_by_type": {t: n for t, n in zip(NODE_TYPES, node_types) if n},
        "edges_by_type": {t: n for t, n in zip(EDGE_TYPES, edge_types) if n},
        "nodes_by_activation": {t: n for t, n in zip(ACTIVATION_TYPES, activations) if n},
        "expected_edges": expected,
        "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "tensors": {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in tensors.items()},
    }
    staged = services.blobs.staging()
    try:
        torch.save({**tensors, "num_nodes": int(data.num_nodes), "mode": mode, "grid": list(getattr(data, "grid", []) or [])}, staged.path)
        info = services.blobs.put_file(staged.path)
    finally:
        staged.discard()
    row = GraphBlob(checkpoint_id=checkpoint.id, converter_version=CONVERTER_VERSION, mode=mode, sha256=info.sha256, size=info.size, summary=summary)
    with services.writing() as session:
        row = checkpoints.add_graph(session, row)
    return row
