"""Zoos (labelled sets of checkpoints) and metanetworks trained on them."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import Checkpoint, Metanet, Zoo, ZooMember


def create_zoo(session: Session, name: str, status: str, recipe: dict | None = None) -> Zoo:
    zoo = Zoo(name=name, status=status, recipe=recipe, summary={})
    session.add(zoo)
    session.flush()
    return zoo


def get_zoo(session: Session, zoo_id: str) -> Zoo | None:
    return session.get(Zoo, zoo_id)


def update_zoo(session: Session, zoo_id: str, **values) -> None:
    session.execute(update(Zoo).where(Zoo.id == zoo_id).values(**values))


def add_members(session: Session, zoo_id: str, members: list[dict], start: int = 0) -> None:
    """`members`: dicts with checkpoint_id, group and labels, appended in order."""
    session.add_all(ZooMember(zoo_id=zoo_id, position=start + i, **m) for i, m in enumerate(members))


def members(session: Session, zoo_id: str) -> list[ZooMember]:
    return list(session.scalars(select(ZooMember).where(ZooMember.zoo_id == zoo_id).order_by(ZooMember.position)))


def missing_checkpoints(session: Session, ids: list[str]) -> list[str]:
    found = set(session.scalars(select(Checkpoint.id).where(Checkpoint.id.in_(ids))))
    return [i for i in dict.fromkeys(ids) if i not in found]


def architecture_hints(session: Session, ids: list[str]) -> list[dict | None]:
    """Each checkpoint's own architecture hints (as supplied with it), in the order of ``ids``."""
    supplied = dict(session.execute(select(Checkpoint.id, Checkpoint.architecture_input).where(Checkpoint.id.in_(ids))).all())
    return [(supplied.get(i) or {}).get("hints") for i in ids]


def create_metanet(session: Session, **values) -> Metanet:
    metanet = Metanet(status="training", **values)
    session.add(metanet)
    session.flush()
    return metanet


def get_metanet(session: Session, metanet_id: str) -> Metanet | None:
    return session.get(Metanet, metanet_id)


def list_metanets(session: Session, zoo_id: str | None = None, limit: int = 100) -> list[Metanet]:
    query = select(Metanet).order_by(Metanet.created_at.desc(), Metanet.id.desc()).limit(limit)
    if zoo_id is not None:
        query = query.where(Metanet.zoo_id == zoo_id)
    return list(session.scalars(query))


def update_metanet(session: Session, metanet_id: str, **values) -> None:
    session.execute(update(Metanet).where(Metanet.id == metanet_id).values(**values))
