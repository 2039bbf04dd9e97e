"""Ctrl-C only where stopping is safe.

A KeyboardInterrupt may be raised between any two bytecodes of the main thread. Landing inside SQLAlchemy, it can
leave the SQLite connection holding its lock while the exception is handled, so the process's own clean-up
(failing and re-queueing its trial) and every other worker of the study wait out the 60 s lock timeout. Landing in
Optuna's bookkeeping around a trial (`ask` after the trial is created, before its heartbeat starts) it leaves a
RUNNING trial that no heartbeat ever marks stale: a zombie that an exact `n_trials` budget would wait on forever.

So SIGINT is *held* while the main thread is in such a section, and raised as soon as the section ends or the
code reaches a place marked `interruptible` (a trial's training, a wait). Other threads never see signals.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_holds = 0  # depth of the held sections the main thread is in
_pending = False  # a SIGINT arrived while held


def _on_sigint(signum: int, frame: Any) -> None:
    global _pending
    if _holds:
        _pending = True
    else:
        signal.default_int_handler(signum, frame)


def _on_sigterm(signum: int, frame: Any) -> None:
    _on_sigint(signal.SIGINT, frame)


def install() -> None:
    """Use the holding SIGINT handler, unless the program has a handler of its own; SIGTERM (a `kill`, a job
    scheduler's stop) then stops the run the same way, failing and re-queueing its trials, where by default it
    would end the process with its trials left RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    if signal.getsignal(signal.SIGINT) is _on_sigint and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _raise_pending() -> None:
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


def raise_if_pending() -> None:
    """Inside a held section, before starting something Ctrl-C would cut at once (a new trial): stop here."""
    if threading.current_thread() is threading.main_thread():
        _raise_pending()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A section Ctrl-C must not cut: a SIGINT arriving in it is raised when it ends."""
    global _holds
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _holds += 1
    try:
        yield
    finally:
        _holds -= 1
        if not _holds:
            _raise_pending()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside a held section, a place Ctrl-C may stop: a SIGINT held so far is raised on entry."""
    global _holds
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer, _holds = _holds, 0
    try:
        _raise_pending()
        yield
    finally:
        _holds = outer
