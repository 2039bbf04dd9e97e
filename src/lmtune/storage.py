"""Optuna storage from a URL: SQLite by default, PostgreSQL (psycopg 3) or any SQLAlchemy URL for many workers.

A database password comes from the URL (`postgresql://user:pw@host/db`) or, so that it is never written in a
config file, from the environment variable LMTUNE_STORAGE_PASSWORD for a URL that names a user and no password
(`postgresql://user@host/db`). Either way it is masked in every message and log line of the process and left out
of what lmtune stores in the study.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from lmtune import interrupts
from lmtune.errors import ConfigError
from lmtune.records import FAIL_REASON

PASSWORD_ENV = "LMTUNE_STORAGE_PASSWORD"
# scheme://user:PASSWORD@host — the password runs to the last "@" before the host, as in SQLAlchemy's parser.
_PASSWORD = re.compile(r"(\w://[^:/@\s]*:)(\S*)(@[^@/\s]*)")


def mask_url(text: str) -> str:
    """`text` (a URL, a message, a log line) with every URL password and the LMTUNE_STORAGE_PASSWORD value
    replaced by ***."""
    text = _PASSWORD.sub(r"\1***\3", text)
    secret = os.environ.get(PASSWORD_ENV)
    return text.replace(secret, "***") if secret else text


def strip_password(url: str) -> str:
    """The URL without its password, for what is stored or written to files (best.yaml reruns then take the
    password from LMTUNE_STORAGE_PASSWORD)."""
    return _PASSWORD.sub(lambda m: m.group(1)[:-1] + m.group(3), url)


def database_url(url: str) -> str:
    """The SQLAlchemy URL to connect with: psycopg 3 for plain `postgresql://`, and the password from
    LMTUNE_STORAGE_PASSWORD when the URL names a user without one."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    secret = os.environ.get(PASSWORD_ENV)
    if secret and not url.startswith("sqlite:"):
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            return url  # RDBStorage reports the malformed URL
        if parsed.username and parsed.password is None:
            return parsed.set(password=secret).render_as_string(hide_password=False)
    return url


def open_storage(url: str, create: bool = True, *, heartbeat_interval: int = 30,
                 grace_period: int = 120) -> optuna.storages.BaseStorage:
    """`memory://` keeps the study in this process only (benchmarks, quick experiments). With `create=False`
    a SQLite file must exist already: reading a study never leaves an empty database behind a typo.

    Every running trial writes a heartbeat each `heartbeat_interval` seconds. A trial whose heartbeat is older
    than `grace_period` (its worker was killed) is marked failed by the next worker that starts a trial, and its
    parameters are enqueued once more (Optuna's RetryHeartbeatStaleTrialCallback), so a crash costs one retry, not a
    zombie RUNNING trial.
    """
    mask_log_records()
    if url == "memory://":
        return optuna.storages.InMemoryStorage()
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        # Workers on one machine queue for SQLite's write lock; its 5 s default timeout is short under load.
        engine_kwargs["connect_args"] = {"timeout": 60}
        db = Path(url.removeprefix("sqlite:///"))
        if str(db) not in ("", ":memory:"):
            if not create and not db.expanduser().is_file():
                raise ConfigError(f"storage {url!r}: no database file {str(db)!r}; check the path (or run the "
                                  "study first)")
            try:
                db.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"storage {url!r}: cannot create the folder of {str(db)!r} "
                                  f"({e.strerror or e}); check the path") from None
    try:
        # Heartbeats let a later run see that a trial's process died instead of leaving it RUNNING forever.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = InterruptSafeStorage(
                database_url(url), heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                engine_kwargs=engine_kwargs)
    except Exception as e:  # SQLAlchemy raises many types: bad driver, refused connection, bad password
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"storage {mask_url(url)!r} cannot be opened: {mask_url(reason)}; check the URL, "
                          "that the server is running and the credentials") from None
    interrupts.install()
    return storage


_F = TypeVar("_F", bound=Callable[..., Any])


def _uninterrupted(method: _F) -> _F:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with interrupts.held():
            return method(*args, **kwargs)
    return call  # type: ignore[return-value]


class InterruptSafeStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls Ctrl-C never cuts short (`lmtune.interrupts` says why), and whose stale
    trials say why they failed."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna marks these trials failed next, and a finished trial's attributes cannot change: their reason
        is written while they are still RUNNING (by whichever worker sees them first)."""
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            with contextlib.suppress(Exception):  # another worker failed it first: its reason stands
                self.set_trial_user_attr(trial_id, FAIL_REASON, (
                    f"worker died: no heartbeat for over {self.grace_period} s (its process was killed or its "
                    "machine lost); its parameters are queued to run again once"))
        return stale


for _name, _method in vars(optuna.storages.RDBStorage).items():
    if inspect.isfunction(_method) and not _name.startswith("__"):
        setattr(InterruptSafeStorage, _name, _uninterrupted(vars(InterruptSafeStorage).get(_name, _method)))


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


def mask_log_records() -> None:
    """From now on, mask storage passwords in every log record of this process, whichever library logs it
    (SQLAlchemy, psycopg, Optuna, Ray), traceback included: the record factory runs before any handler or
    format."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "masks_passwords", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: logging reports it when the record is emitted
            return record
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:  # formatters reuse exc_text once it is set
            record.exc_text = mask_url(logging.Formatter().formatException(record.exc_info))
        return record

    factory.masks_passwords = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
