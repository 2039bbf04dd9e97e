"""Optuna storage from a URL: SQLite by default, PostgreSQL (psycopg 3) or any SQLAlchemy URL for many workers."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna

from lmtune.errors import ConfigError

_PASSWORD = re.compile(r"(://[^:/@]+:)([^@]+)(@)")


def mask_url(url: str) -> str:
    """The URL with its password replaced, for every message and log line."""
    return _PASSWORD.sub(r"\1***\3", url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """`memory://` keeps the study in this process only (benchmarks, quick experiments)."""
    if url == "memory://":
        return optuna.storages.InMemoryStorage()
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if str(db) not in ("", ":memory:"):
            db.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    try:
        # Heartbeats let a later run see that a trial's process died instead of leaving it RUNNING forever.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                              engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # SQLAlchemy raises many types: bad driver, refused connection, bad password
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"storage {mask_url(url)!r} cannot be opened: {mask_url(reason)}; check the URL, "
                          "that the server is running and the credentials") from None
