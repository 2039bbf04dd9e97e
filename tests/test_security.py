"""Security: no code runs from input, checkpoints are tensors only, storage passwords never show, and what
lmtune serves listens on 127.0.0.1."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import torch
from conftest import small_config
from sqlalchemy.engine import make_url

from lmtune.config import validate_config
from lmtune.errors import ConfigError
from lmtune.report.dashboard import create_server
from lmtune.storage import PASSWORD_ENV, database_url, mask_log_records, mask_url, open_storage, strip_password
from lmtune.train.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src" / "lmtune"
SECRET = "s3cr3t-Pw"
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
               "UnsafeLoader", "FullLoader"}


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"import {n}" for n in names if n and n.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
            found.append(f"{node.func.id}()")
        elif isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "yaml" and \
                node.attr in UNSAFE_YAML:
            found.append(f"yaml.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            kw = {k.arg: k.value for k in node.keywords}
            is_true = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch" and not is_true:
                found.append("torch.load without weights_only=True")
            safe = kw.get("safe_serialization")
            if node.func.attr == "save_pretrained" and isinstance(safe, ast.Constant) and safe.value is False:
                found.append("save_pretrained(safe_serialization=False)")
    return found


def test_source_never_unpickles_or_evaluates_input():
    """Config and data are parsed as plain data (yaml.SafeLoader, json, pydantic); weights load as tensors."""
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    found = {str(f.relative_to(SRC)): calls for f in files if (calls := _unsafe_calls(ast.parse(f.read_text())))}
    assert found == {}


def test_the_scan_catches_what_it_looks_for():
    bad = ("import pickle\neval('1')\nyaml.load(s)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
           "m.save_pretrained(d, safe_serialization=False)\nfrom dill import loads\n")
    assert len(_unsafe_calls(ast.parse(bad))) == 7
    assert _unsafe_calls(ast.parse("torch.load(p, weights_only=True)\nyaml.safe_load(s)\nmodel.eval()")) == []


def test_checkpoints_are_safetensors_and_tensor_only_state(tmp_path):
    cfg = validate_config(small_config(tmp_path, train={"max_steps": 2}))
    trainer = Trainer(cfg.model, cfg.data, cfg.train).setup()
    trainer.train()
    saved = trainer.save(tmp_path / "model")
    assert (saved / "model.safetensors").is_file()
    assert not [p.name for p in saved.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    state = trainer.save_state(tmp_path / "ckpt")
    assert torch.load(state / "trainer_state.pt", weights_only=True)["step"] == 2  # no pickled objects inside


def test_password_comes_from_the_environment_for_a_url_without_one(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "p@ss:/word")
    url = make_url(database_url("postgresql://tuner@db.example:5432/studies"))
    assert (url.drivername, url.username, url.password, url.host) == ("postgresql+psycopg", "tuner", "p@ss:/word",
                                                                       "db.example")
    assert make_url(database_url("postgresql://tuner:inurl@db.example/s")).password == "inurl"  # the URL's wins
    assert database_url("sqlite:///study.db") == "sqlite:///study.db"
    monkeypatch.delenv(PASSWORD_ENV)
    assert make_url(database_url("postgresql://tuner@db.example/s")).password is None


def test_passwords_are_masked_and_not_stored(monkeypatch):
    masked = mask_url(f"cannot reach 'postgresql://u:{SECRET}@h:5432/db' now")
    assert masked == "cannot reach 'postgresql://u:***@h:5432/db' now"
    assert mask_url("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"  # "@" inside the password
    assert mask_url("sqlite:////tmp/a:b/study.db") == "sqlite:////tmp/a:b/study.db"
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    assert mask_url(f"FATAL: password {SECRET} rejected") == "FATAL: password *** rejected"
    assert strip_password(f"postgresql://u:{SECRET}@h:5432/db") == "postgresql://u@h:5432/db"


def test_connection_error_does_not_show_the_password(monkeypatch):
    for url in (f"postgresql://u:{SECRET}@127.0.0.1:1/db", f"postgresql://u:{SECRET}@127.0.0.1:nope/db"):
        with pytest.raises(ConfigError, match="cannot be opened") as err:
            open_storage(url)
        assert SECRET not in str(err.value) and "u:***@127.0.0.1" in str(err.value)
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    with pytest.raises(ConfigError) as err:
        open_storage("postgresql://u@127.0.0.1:1/db")
    assert SECRET not in str(err.value)


def test_every_log_line_is_masked(caplog, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    mask_log_records()
    with caplog.at_level(logging.INFO):
        logging.getLogger("sqlalchemy.engine").warning("connecting to %s", f"postgresql://u:{SECRET}x@h/db")
        logging.getLogger("some.library").info("retrying with %s", SECRET)
    assert SECRET not in caplog.text and caplog.text.count("***") == 2


def test_a_logged_traceback_is_masked(caplog, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    mask_log_records()
    try:
        raise ConnectionError(f"lost postgresql://u:{SECRET}@h/db")
    except ConnectionError:
        logging.getLogger("some.worker").exception("trial failed")
    assert "ConnectionError" in caplog.text and "u:***@h" in caplog.text and SECRET not in caplog.text


def test_dashboard_listens_on_loopback_only(tmp_path):
    server, url = create_server(f"sqlite:///{tmp_path / 'd.db'}", port=0)
    try:
        assert server.server_address[0] == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    finally:
        server.server_close()
