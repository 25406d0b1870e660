"""Zoos and metanetworks: validate requests (bad input never starts a job), generate zoos and train metanetworks in
workers, predict for stored checkpoints. torch is imported lazily, only by these paths."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, OrderedDict
from pathlib import Path

from storage import zoos
from storage.formats import safetensors as stf
from storage.models import Metanet, Zoo

from .ingest import UploadMeta, ingest
from .problems import Problem, not_found
from .services import Services
from .uploads import Received, ReceivedFile

TASKS = ("regression", "classification")


def label_summary(labels: list[dict]) -> dict:
    """Per label: numeric spread (to judge whether it can be ranked) or class counts."""
    out: dict = {}
    for name in sorted({k for row in labels for k in row}):
        values = [row[name] for row in labels if name in row]
        numeric = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if len(numeric) == len(values) and numeric:
            q = statistics.quantiles(numeric, n=4) if len(numeric) > 1 else [numeric[0]] * 3
            out[name] = {"count": len(numeric), "mean": statistics.fmean(numeric), "std": statistics.pstdev(numeric),
                         "min": min(numeric), "q25": q[0], "median": q[1], "q75": q[2], "max": max(numeric)}
        else:
            out[name] = {"count": len(values), "classes": dict(Counter(str(v) for v in values).most_common(50))}
    return out


def create_from_checkpoints(services: Services, name: str, members: list[dict]) -> Zoo:
    if not members:
        raise Problem(422, "empty-zoo", "a zoo needs at least one member")
    with services.writing() as session:
        missing = zoos.missing_checkpoints(session, [m["checkpoint_id"] for m in members])
        if missing:
            raise Problem(422, "unknown-checkpoints", f"no checkpoint with id {', '.join(map(repr, missing[:20]))}", checkpoint_ids=missing)
        zoo = zoos.create_zoo(session, name, "ready")
        zoos.add_members(session, zoo.id, [{"checkpoint_id": m["checkpoint_id"], "labels": m["labels"],
                                            "group": m.get("group") or m["checkpoint_id"]} for m in members])
        zoo.summary = {"members": len(members), "labels": label_summary([m["labels"] for m in members])}
    return zoo


def check_recipe(recipe: dict) -> dict:
    from metanets.errors import MetanetError
    from metanets.zoo.recipe import ZooRecipe

    try:
        return ZooRecipe(**recipe).to_json()
    except (MetanetError, TypeError) as exc:
        raise Problem(422, "invalid-recipe", f"recipe: {exc}") from None


def generate(ctx) -> dict:
    """Worker: train the recipe's zoo, store every member as a checkpoint, and fill the zoo's rows."""
    import tempfile

    from metanets.zoo import ZooRecipe, generate_zoo

    zoo_id, recipe = ctx.params["zoo_id"], ZooRecipe(**ctx.params["recipe"])
    services: Services = ctx.services
    try:
        with tempfile.TemporaryDirectory(dir=services.blobs.tmp_dir) as out:
            members = generate_zoo(recipe, out, progress=lambda done, total: ctx.progress(0.8 * done / max(total, 1)))
            rows = []
            for i, member in enumerate(members):
                checkpoint = _store_file(services, Path(out) / member.file, member.id, zoo_id, member.run,
                                         member.meta.get("hints"))
                rows.append({"checkpoint_id": checkpoint.id, "labels": member.labels, "group": f"{zoo_id}:{member.run}"})
                ctx.progress(0.8 + 0.2 * (i + 1) / len(members))
        with services.writing() as session:
            zoos.add_members(session, zoo_id, rows)
            summary = {"members": len(rows), "labels": label_summary([r["labels"] for r in rows])}
            zoos.update_zoo(session, zoo_id, status="ready", summary=summary)
    except BaseException:
        with services.writing() as session:
            zoos.update_zoo(session, zoo_id, status="failed")
        raise
    return {"zoo_id": zoo_id, "members": len(rows)}


def _store_file(services: Services, path: Path, name: str, zoo_id: str, run: str, hints: dict | None):
    """One member as a checkpoint, with its own hints (a CNN zoo mixes relu and tanh runs)."""
    staged = services.blobs.staging()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            staged.write(chunk)
    received = Received(files=[ReceivedFile(path.name, staged)], size=staged.size)
    return ingest(services, received, UploadMeta(name=name, run=f"zoo:{zoo_id}:{run}", tags=[f"zoo:{zoo_id}"],
                                                 architecture={"hints": hints} if hints else None))


def ordered_state_dict(path: Path) -> dict:
    """A stored checkpoint's tensors, in the module order kept in its metadata when present."""
    from metanets.zoo.store import ordered_state_dict as load

    return load(path)


def check_training_request(services: Services, kind: str, zoo_id: str, target: str, task: str | None, hyperparameters: dict) -> str:
    """Every refusal before a job starts: unknown zoo, not ready, empty, labels missing or non-numeric, mixed
    architectures where the model needs one, bad hyperparameters. Returns the task."""
    from metanets.errors import MetanetError
    from metanets.training import TrainConfig

    with services.sessions() as session:
        zoo = zoos.get_zoo(session, zoo_id)
        if zoo is None:
            raise Problem(422, "unknown-zoo", f"zoo {zoo_id!r} does not exist")
        if zoo.status != "ready":
            raise Problem(409, "zoo-not-ready", f"zoo {zoo_id!r} is {zoo.status}")
        members = zoos.members(session, zoo_id)
        shapes = _architectures(session, [m.checkpoint_id for m in members]) if kind in ("unf", "statnn") else {}
    if not members:
        raise Problem(422, "empty-zoo", f"zoo {zoo_id!r} has no members")
    missing = [m.checkpoint_id for m in members if target not in m.labels]
    if missing:
        raise Problem(422, "missing-labels", f"{len(missing)} members have no label {target!r} (e.g. checkpoint {missing[0]!r})")
    values = [m.labels[target] for m in members]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    task = task or ("regression" if numeric else "classification")
    if task == "regression" and not numeric:
        bad = next(v for v in values if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)))
        raise Problem(422, "non-numeric-labels", f"regression needs numeric labels; {target!r} has {bad!r}")
    if len(shapes) > 1:
        raise Problem(422, "mixed-architectures", f"{kind} needs one architecture; this zoo has {len(shapes)} different ones")
    try:
        cfg = TrainConfig.parse(hyperparameters)
    except MetanetError as exc:
        raise Problem(422, "validation-error", f"hyperparameters: {exc}", title="Invalid request") from None
    if task == "regression" and cfg.loss == "bce" and not all(0 <= v <= 1 for v in values):
        raise Problem(422, "validation-error", f"hyperparameters: loss 'bce' needs labels in [0, 1]; {target!r} "
                      "has values outside", title="Invalid request")
    return task


def _architectures(session, checkpoint_ids: list[str]) -> dict:
    from sqlalchemy import select

    from storage.models import TensorRecord

    layouts: dict[str, list] = {}
    for cid, name, shape in session.execute(
        select(TensorRecord.checkpoint_id, TensorRecord.name, TensorRecord.shape).where(TensorRecord.checkpoint_id.in_(checkpoint_ids))
    ):
        layouts.setdefault(cid, []).append((name, tuple(shape)))
    return Counter(tuple(sorted(v)) for v in layouts.values())


def train(ctx) -> dict:
    """Worker: train the metanetwork row `params.metanet_id` on its zoo and store weights, config and metrics."""
    from metanets.training import TrainConfig, train_metanet

    services: Services = ctx.services
    metanet_id = ctx.params["metanet_id"]
    try:
        with services.sessions() as session:
            metanet = zoos.get_metanet(session, metanet_id)
            zoo = zoos.get_zoo(session, metanet.zoo_id)
            members = zoos.members(session, metanet.zoo_id)
            hints = zoos.architecture_hints(session, [m.checkpoint_id for m in members])
        hyper = dict(metanet.hyperparameters)
        if "hints" not in hyper and (zoo.summary or {}).get("hints"):  # zoos generated before per-checkpoint hints
            hyper["hints"] = zoo.summary["hints"]
        states = []
        for i, member in enumerate(members):
            states.append(ordered_state_dict(ctx.checkpoint_path(member.checkpoint_id)))
            ctx.progress(0.1 * (i + 1) / len(members))
        epochs = TrainConfig.parse(hyper).epochs
        trained = train_metanet(
            metanet.kind, states, [m.labels[metanet.target] for m in members], metanet.task, [m.group for m in members],
            hyperparameters=hyper, progress=lambda d: ctx.progress(0.1 + 0.85 * min(1.0, d["epoch"] / epochs)),
            seed=ctx.params.get("seed", 0), checkpoint_hints=hints,
        )
        staged = services.blobs.staging()
        with staged:
            stf.write(staged, list(trained.state_dict().items()), {"config": json.dumps(trained.config)})
            info = staged.commit()
        with services.writing() as session:
            zoos.update_metanet(session, metanet_id, status="ready", weights_sha256=info.sha256, config=trained.config, metrics=trained.metrics)
    except BaseException:
        with services.writing() as session:
            zoos.update_metanet(session, metanet_id, status="failed")
        raise
    return {"metanet_id": metanet_id, "metrics": trained.metrics}


class LoadedMetanets:
    """Trained metanetworks kept in memory for prediction, by weights digest (immutable)."""

    def __init__(self, size: int = 8):
        self.size = size
        self._nets: OrderedDict[str, object] = OrderedDict()

    def get(self, services: Services, metanet: Metanet):
        net = self._nets.get(metanet.weights_sha256)
        if net is None:
            from safetensors.torch import load_file

            from metanets.training import load_metanet

            net = load_metanet(metanet.config, load_file(str(services.blobs.path(metanet.weights_sha256))))
            self._nets[metanet.weights_sha256] = net
            while len(self._nets) > self.size:
                self._nets.popitem(last=False)
        return net


def predict(services: Services, cache: LoadedMetanets, metanet_id: str, checkpoint_ids: list[str]) -> dict:
    from metanets.training import compatible, predict as run_predict
    from storage import checkpoints

    with services.sessions() as session:
        metanet = zoos.get_metanet(session, metanet_id)
        if metanet is None:
            raise not_found("metanet", metanet_id)
        if metanet.status != "ready":
            raise Problem(409, "metanet-not-ready", f"metanet {metanet_id!r} is {metanet.status}")
        missing = zoos.missing_checkpoints(session, checkpoint_ids)
        if missing:
            raise Problem(422, "unknown-checkpoints", f"no checkpoint with id {', '.join(map(repr, missing[:20]))}", checkpoint_ids=missing)
        paths = [services.blobs.path(checkpoints.get(session, cid).canonical_sha256) for cid in checkpoint_ids]
        hints = zoos.architecture_hints(session, checkpoint_ids)
    net = cache.get(services, metanet)
    states = [ordered_state_dict(p) for p in paths]
    problems = {cid: found for cid, sd, h in zip(checkpoint_ids, states, hints) if (found := compatible(net, sd, h))}
    if problems:
        detail = "; ".join(f"{cid}: {', '.join(p[:3])}" for cid, p in problems.items())
        raise Problem(422, "incompatible-checkpoint", f"this metanetwork cannot take: {detail}"[:4000], problems=problems)
    predictions, embeddings = run_predict(net, states, checkpoint_hints=hints)
    return {
        "metanet_id": metanet_id,
        "target": metanet.target,
        "items": [{"checkpoint_id": cid, "prediction": _plain(p), "embedding": [float(x) for x in e]}
                  for cid, p, e in zip(checkpoint_ids, predictions, embeddings)],
    }


def _plain(value):
    return value.item() if hasattr(value, "item") else value
