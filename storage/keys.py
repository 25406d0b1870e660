"""API keys: created once (the secret is shown only then), stored as sha256, looked up by hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from .models import ApiKey, utcnow

PREFIX = "wsk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, name: str) -> tuple[ApiKey, str]:
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=secret[:10], key_hash=hash_key(secret))
    session.add(row)
    return row, secret


def find(session: Session, key: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


def any_active(session: Session) -> bool:
    return bool(session.scalar(select(exists().where(ApiKey.revoked_at.is_(None)))))


def revoke(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True
