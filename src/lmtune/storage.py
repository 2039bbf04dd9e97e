"""Optuna storage from a URL: SQLite by default, PostgreSQL (psycopg 3) or any SQLAlchemy URL for many workers."""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import text

from lmtune.errors import ConfigError

_PASSWORD = re.compile(r"(://[^:/@]+:)([^@]+)(@)")


def mask_url(url: str) -> str:
    """The URL with its password replaced, for every message and log line."""
    return _PASSWORD.sub(r"\1***\3", url)


def open_storage(url: str, heartbeat_interval: int = 30, grace_period: int = 120) -> optuna.storages.BaseStorage:
    """`memory://` keeps the study in this process only (benchmarks, quick experiments).

    Every running trial writes a heartbeat each `heartbeat_interval` seconds. A trial whose heartbeat is older
    than `grace_period` (its worker was killed) is marked failed by the next worker that starts a trial, and its
    parameters are enqueued once more (Optuna's RetryHeartbeatStaleTrialCallback), so a crash costs one retry, not a
    zombie RUNNING trial.
    """
    if url == "memory://":
        return optuna.storages.InMemoryStorage()
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        # Workers on one machine queue for SQLite's write lock; its 5 s default timeout is short under load.
        engine_kwargs["connect_args"] = {"timeout": 60}
        db = Path(url.removeprefix("sqlite:///"))
        if str(db) not in ("", ":memory:"):
            db.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    try:
        # Heartbeats let a later run see that a trial's process died instead of leaving it RUNNING forever.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                engine_kwargs=engine_kwargs)
    except Exception as e:  # SQLAlchemy raises many types: bad driver, refused connection, bad password
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"storage {mask_url(url)!r} cannot be opened: {mask_url(reason)}; check the URL, "
                          "that the server is running and the credentials") from None


_process_lock = threading.Lock()


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Iterator[None]:
    """Serialise "count the trials, then start one" between all workers of a study, so a budget of N trials
    ends with exactly N: a PostgreSQL advisory lock (released by the server if the worker dies), a file lock
    beside a SQLite database, and a process lock first (threads of one process queue here, not each holding a
    database connection while they wait). Other databases get only the process lock: workers in different
    processes may then overshoot n_trials by up to one trial each."""
    backend = getattr(storage, "_backend", storage)  # optuna.Study wraps an RDBStorage in a _CachedStorage
    engine = getattr(backend, "engine", None)
    with _process_lock:
        if engine is None or engine.url.database in (None, "", ":memory:"):
            yield
        elif engine.dialect.name == "postgresql":
            with engine.begin() as conn:  # the transaction-scoped lock goes at commit, or when the worker dies
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": zlib.crc32(f"lmtune:{study_name}".encode())})
                yield
        elif engine.dialect.name == "sqlite":
            import fcntl

            with open(f"{engine.url.database}.lock", "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        else:
            yield
