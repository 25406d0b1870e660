"""Bearer API keys. Keys come from WEIGHTSCOPE_API_KEYS or the api_keys table (hashed); with none configured
the server only listens on loopback and lets requests through. Checks run on the event loop (no thread hop);
database answers are cached for a few seconds, so a revoked key stops working within that time."""

from __future__ import annotations

import hmac
import time

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from storage import keys

from .problems import Problem
from .services import Services, get_services

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")
_CACHE_SECONDS = 5.0


class KeyRegistry:
    """Answers 'is this key valid' and 'is auth on' without a database hit on every anonymous request."""

    def __init__(self, services: Services):
        self.services = services
        self.env_hashes = [keys.hash_key(k) for k in services.settings.api_keys]
        self._db_has_keys: tuple[float, bool] = (0.0, False)
        self._valid_until: dict[str, float] = {}  # database keys seen valid (a revocation shows within the cache time)

    def auth_required(self) -> bool:
        if self.env_hashes:
            return True
        checked_at, value = self._db_has_keys
        if time.monotonic() - checked_at > _CACHE_SECONDS:
            with self.services.sessions() as session:
                value = keys.any_active(session)
            self._db_has_keys = (time.monotonic(), value)
        return value

    def valid(self, key: str) -> bool:
        digest = keys.hash_key(key)
        if any(hmac.compare_digest(digest, h) for h in self.env_hashes):
            return True
        if self._valid_until.get(digest, 0.0) > time.monotonic():
            return True
        with self.services.sessions() as session:
            found = keys.find(session, key) is not None
        if found:
            if len(self._valid_until) > 10_000:
                self._valid_until.clear()
            self._valid_until[digest] = time.monotonic() + _CACHE_SECONDS
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The key in an Authorization header, read as `bearer` (HTTPBearer with auto_error off) reads it: None when
    the header is absent, malformed or of another scheme."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def check_key(registry: KeyRegistry, key: str | None) -> None:
    """Raise the 401 problem unless `key` (None: no usable Authorization header) may use the API."""
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if key is None:
        if registry.auth_required():
            raise Problem(401, "unauthorized", "this server requires an API key: send Authorization: Bearer <key>", headers=unauthorized)
        return
    if not registry.valid(key):
        raise Problem(401, "unauthorized", "the API key is not valid or was revoked", headers=unauthorized)


async def require_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    services: Services = Depends(get_services),
) -> None:
    check_key(request.app.state.keys, credentials.credentials if credentials else None)
