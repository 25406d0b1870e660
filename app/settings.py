"""Service settings, read from WEIGHTSCOPE_* environment variables (and a .env file if present)."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WEIGHTSCOPE_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None  # default: SQLite file in data_dir
    max_upload_bytes: int = 20 * 1024**3
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2  # embedded job worker processes; 0 runs none (another process claims jobs)
    api_processes: int = Field(1, ge=1)  # processes serving HTTP on the one port (`serve --processes`)
    job_lease_seconds: float = 60.0
    job_poll_seconds: float = 0.5
    gc_grace_seconds: float = 600.0
    gc_interval_seconds: float = 900.0
    log_level: str = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        """Comma-separated in the environment."""
        return [k.strip() for k in value.split(",") if k.strip()] if isinstance(value, str) else value

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'weightscope.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def loopback(self) -> bool:
        host = self.host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
