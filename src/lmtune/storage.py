"""Optuna storage from a URL: SQLite by default, PostgreSQL (psycopg 3) or any SQLAlchemy URL for many workers.

A database password comes from the URL (`postgresql://user:pw@host/db`) or, so that it is never written in a
config file, from the environment variable LMTUNE_STORAGE_PASSWORD for a URL that names a user and no password
(`postgresql://user@host/db`). Either way it is masked in every message and log line of the process and left out
of what lmtune stores in the study.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from lmtune.errors import ConfigError

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


def open_storage(url: str, create: bool = True) -> optuna.storages.BaseStorage:
    """`memory://` keeps the study in this process only (benchmarks, quick experiments). With `create=False`
    a SQLite file must exist already: reading a study never leaves an empty database behind a typo."""
    mask_log_records()
    if url == "memory://":
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite:///"):
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
            return optuna.storages.RDBStorage(database_url(url), heartbeat_interval=30, grace_period=120,
                                              engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # SQLAlchemy raises many types: bad driver, refused connection, bad password
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"storage {mask_url(url)!r} cannot be opened: {mask_url(reason)}; check the URL, "
                          "that the server is running and the credentials") from None


def mask_log_records() -> None:
    """From now on, mask storage passwords in every log record of this process, whichever library logs it
    (SQLAlchemy, psycopg, Optuna, Ray): the record factory runs before any handler or format."""
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
        return record

    factory.masks_passwords = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
