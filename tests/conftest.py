"""Shared fixtures: a private LMTUNE_HOME for the built-in model, and small configs that train in seconds."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# The built-in models are materialised once per test session, not in the user's cache; the folder is removed at
# exit (it holds the 540 MB de-quantized SmolLM2 when tests/test_real_model.py ran).
if "LMTUNE_HOME" not in os.environ:
    os.environ["LMTUNE_HOME"] = tempfile.mkdtemp(prefix="lmtune-test-home-")
    atexit.register(shutil.rmtree, os.environ["LMTUNE_HOME"], True)
# Nothing in the tests may reach the network: a hub id fails at once instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)
# A shell without job control starts background jobs with SIGINT ignored, and Python keeps it ignored (as lmtune
# does, on purpose): the Ctrl-C tests then send SIGINTs that vanish, and one of them waits forever. Tests of Ctrl-C
# need a process that Ctrl-C reaches, however pytest was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def small_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A study config on the 2-layer built-in model and 300 synthetic rows: a trial takes about a second."""
    cfg: dict[str, Any] = {
        "study_name": "test",
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name_or_path": "builtin:micro"},
        "data": {"builtin": {"n_train": 300, "n_validation": 40, "n_test": 40}},
        "train": {"learning_rate": 3e-3, "per_device_train_batch_size": 16, "max_steps": 12, "eval_steps": 6,
                  "eval_max_samples": 24},
        "search": {"strategy": "random", "n_trials": 3, "seed": 0,
                   "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
        "objective": {"metric": "eval_loss"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return small_config(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PG_PASSWORD = "s3cret-pw"


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A private PostgreSQL server on 127.0.0.1 for this test session; yields a URL with user and password.

    `make test` installs the Debian packages; a local run without them skips, CI (CI set) fails instead."""
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) are missing: `make test` installs them")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="lmtune-pg-"))  # not under pytest's 0700 folder: postgres must enter
    data, sock, port = root / "data", root / "sock", free_port()
    sock.mkdir()
    (root / "pw").write_text(PG_PASSWORD)
    user = ["--username", "lmtune"]
    as_postgres = _as_postgres_user(root)
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), *user, "--auth=scram-sha-256",
                    f"--pwfile={root / 'pw'}", "-E", "UTF8"], check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=100"
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), *user, "lmtune"],
                       check=True, capture_output=True, env=env)
        yield f"postgresql://lmtune:{PG_PASSWORD}@127.0.0.1:{port}/lmtune"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def _as_postgres_user(root: Path) -> list[str]:
    """initdb refuses to run as root: run the server as the `postgres` user the Debian package creates."""
    if os.geteuid() != 0:
        return []
    for p in (root, *root.iterdir()):
        shutil.chown(p, "postgres")
    return ["runuser", "-u", "postgres", "--"]
