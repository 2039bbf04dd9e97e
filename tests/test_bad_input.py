"""Bad input, case by case, through the real command line: each is refused with exit code 2 and one paragraph
that names the problem (no traceback), and loses nothing: an existing study database stays byte-identical and
no other file appears.

Every case runs against its own copy of one study database made by a real tiny study, with the case's config
(or command line) pointing at that copy.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import small_config
from typer.testing import CliRunner

from lmtune import tune
from lmtune.cli import app

SECRET = "hunter2-Secret"
ALPACA = '{"instruction": "Echo.", "input": "a", "output": "a"}\n'


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


CLOSED = _closed_port()


@dataclass
class Case:
    id: str
    expect: list[str]  # every one appears in the message
    patch: dict[str, Any] = field(default_factory=dict)  # deep-merged into the study's config
    yaml_text: str | None = None  # the config file's raw text instead
    files: dict[str, str | bytes] = field(default_factory=dict)  # written beside the config first
    args: list[str] = field(default_factory=list)  # the command line; {config} and {dir} are filled in
    env: dict[str, str] = field(default_factory=dict)


RUN = ["run", "{config}", "--quiet"]
SPACE = "search.space"
CASES = [
    # YAML syntax
    Case("yaml-unclosed-flow", ["invalid YAML", "line 2"], yaml_text="search: {n_trials: 3\ntrain: {}\n"),
    Case("yaml-bad-indent", ["invalid YAML", "line 2"], yaml_text="study_name: test\n  storage: x\n"),
    Case("yaml-tab", ["invalid YAML", "line 2"], yaml_text="train:\n\tlearning_rate: 0.1\n"),
    Case("yaml-duplicate-key", ["invalid YAML", "duplicate key 'learning_rate'"],
         yaml_text="train:\n  learning_rate: 0.1\n  learning_rate: 0.2\n"),
    Case("yaml-top-level-list", ["top level must be a mapping"], yaml_text="- run\n- fast\n"),
    Case("yaml-python-object", ["invalid YAML", "python/object"],
         yaml_text="study_name: !!python/object/apply:os.system ['touch pwned']\n"),
    # unknown keys
    Case("unknown-top-level-key", ["studyname: unknown key", "did you mean 'study_name'"],
         patch={"studyname": "x"}),
    Case("unknown-train-key", ["train.learning_rat: unknown key", "'learning_rate'"],
         patch={"train": {"learning_rat": 0.1}}),
    Case("unknown-space-param", [f"{SPACE}.learning_rat: not a searchable training argument"],
         patch={"search": {"space": {"learning_rat": {"low": 1e-4, "high": 1e-2}}}}),
    Case("unknown-param-spec-key", ["logg: unknown key"],
         patch={"search": {"space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "logg": True}}}}),
    Case("unknown-strategy", ["search.strategy", "bayes"], patch={"search": {"strategy": "bayes"}}),
    Case("unknown-metric", ["unknown metric 'accuracy'"], patch={"objective": {"metric": "accuracy"}}),
    Case("unknown-builtin-task", ["unknown task 'poetry'"], patch={"data": {"builtin": {"tasks": ["poetry"]}}}),
    # wrong types and values
    Case("learning-rate-not-a-number", ["train.learning_rate", "'fast'"],
         patch={"train": {"learning_rate": "fast"}}),
    Case("n-trials-not-a-number", ["search.n_trials", "'ten'"], patch={"search": {"n_trials": "ten"}}),
    Case("max-steps-fraction", ["train.max_steps", "1.5"], patch={"train": {"max_steps": 1.5}}),
    Case("max-length-list", ["data.max_length"], patch={"data": {"max_length": [1, 2]}}),
    Case("batch-size-zero", ["train.per_device_train_batch_size", "greater than or equal to 1"],
         patch={"train": {"per_device_train_batch_size": 0}}),
    Case("train-section-scalar", ["train", "5"], patch={"train": 5}),
    Case("bf16-and-fp16", ["bf16 and fp16 are both true"], patch={"train": {"bf16": True, "fp16": True}}),
    Case("fractions-leave-nothing", ["must leave at least 10 % to train on"],
         patch={"data": {"validation_fraction": 0.5, "test_fraction": 0.45}}),
    Case("template-without-prompt", ["data.prompt_template", "{prompt}"],
         patch={"data": {"prompt_template": "Q: {question}"}}),
    Case("cli-n-trials-zero", ["--n-trials 0", "greater than or equal to 1"], args=[*RUN, "--n-trials", "0"]),
    Case("cli-timeout-negative", ["--timeout -5.0", "greater than 0"], args=[*RUN, "--timeout", "-5"]),
    # empty or impossible search spaces
    Case("space-empty", ["search.space is empty", "nothing to tune"], patch={"search": {"space": {}}}),
    Case("space-all-fixed-no-baseline", ["search.space fixes every parameter", "nothing to tune"],
         patch={"search": {"baseline": False, "space": {"learning_rate": 0.01, "optim": ["sgd"]}}}),
    Case("space-low-above-high", [f"{SPACE}.learning_rate", "swap them"],
         patch={"search": {"space": {"learning_rate": {"low": 1e-2, "high": 1e-4}}}}),
    Case("space-empty-choices", [f"{SPACE}.optim", "non-empty list of choices"],
         patch={"search": {"space": {"optim": []}}}),
    Case("space-log-from-zero", ["log scale needs low > 0"],
         patch={"search": {"space": {"learning_rate": {"low": 0.0, "high": 1e-2, "log": True}}}}),
    Case("space-missing-bound", [f"{SPACE}.weight_decay", "needs both low and high"],
         patch={"search": {"space": {"weight_decay": {"type": "float", "low": 0.0}}}}),
    Case("space-invalid-choice", [f"{SPACE}.lr_scheduler_type: value 'cosinee' is not allowed"],
         patch={"search": {"space": {"lr_scheduler_type": ["linear", "cosinee"]}}}),
    Case("space-negative-batch", [f"{SPACE}.per_device_train_batch_size: value -4 is not allowed"],
         patch={"search": {"space": {"per_device_train_batch_size": {"low": -4, "high": 8}}}}),
    Case("grid-continuous", ["grid search needs finite values"], patch={"search": {"strategy": "grid"}}),
    Case("condition-cycle", ["conditions form a cycle"], patch={"search": {"space": {
        "optim": {"choices": ["sgd", "adamw"], "condition": {"lr_scheduler_type": "linear"}},
        "lr_scheduler_type": {"choices": ["linear", "cosine"], "condition": {"optim": "sgd"}}}}}),
    Case("condition-never-true", ["can never happen"], patch={"search": {"space": {
        "optim": ["adamw", "rmsprop"], "momentum": {"low": 0.0, "high": 0.9, "condition": {"optim": "sgd"}}}}}),
    Case("lora-searched-without-lora", [f"{SPACE}.lora_r: it has no effect with train.use_lora = False"],
         patch={"search": {"space": {"lora_r": [8, 16]}}}),
    Case("momentum-searched-with-adamw", [f"{SPACE}.momentum: it has no effect with train.optim = 'adamw'"],
         patch={"search": {"space": {"momentum": {"low": 0.8, "high": 0.99}}}}),
    Case("pbt-with-pruner", ["population-based training replaces pruning"],
         patch={"search": {"strategy": "pbt", "pruner": "asha"}}),
    Case("pbt-searched-length", [f"{SPACE}.max_steps: population-based training trains every member"],
         patch={"search": {"strategy": "pbt", "space": {"max_steps": [6, 12]}}}),
    Case("pbt-in-epochs", ["train.max_steps: population-based training needs a run length in optimizer steps"],
         patch={"search": {"strategy": "pbt"}, "train": {"max_steps": -1, "num_train_epochs": 1.0}}),
    Case("pbt-with-select", ["select: the selection phase re-trains static configs"],
         patch={"search": {"strategy": "pbt"}, "select": {"seeds": [0]}}),
    Case("select-unmeasured-metric", ["'train_seconds' is not measured", "objective.metric"],
         patch={"objective": {"metric": "train_seconds"}, "select": {"seeds": [0]}}),
    Case("select-cli-unmeasured-metric", ["'train_seconds' is not measured"],
         patch={"objective": {"metric": "train_seconds"}}, args=["select", "{config}", "--seeds", "0"]),
    # missing files
    Case("config-missing", ["does not exist", "missing.yaml"], args=["run", "{dir}/missing.yaml"]),
    Case("data-file-missing", ["does not exist", "data.path"], patch={"data": {"path": "nope.jsonl"}}),
    Case("validation-file-missing", ["does not exist", "val.jsonl"],
         patch={"data": {"path": "d.jsonl", "validation_path": "val.jsonl"}}, files={"d.jsonl": ALPACA * 40}),
    Case("model-dir-missing", ["no-such-model", "neither an existing directory nor a hub id"],
         patch={"model": {"name_or_path": "./no-such-model"}}),
    Case("model-dir-without-config", ["has no config.json"], patch={"model": {"name_or_path": "./weights"}},
         files={"weights/model.safetensors": "not a model"}),
    # bad dataset rows
    Case("row-not-json", ["d.jsonl, line 2: not valid JSON"], patch={"data": {"path": "d.jsonl"}},
         files={"d.jsonl": ALPACA + "{instruction: Echo}\n" + ALPACA * 40}),
    Case("row-missing-output", ["line 3", "missing field 'output'"], patch={"data": {"path": "d.jsonl"}},
         files={"d.jsonl": ALPACA * 2 + '{"instruction": "Echo."}\n' + ALPACA * 40}),
    Case("row-not-an-object", ["line 2", "must be a JSON object"], patch={"data": {"path": "d.jsonl"}},
         files={"d.jsonl": ALPACA + '"just text"\n' + ALPACA * 40}),
    Case("row-output-number", ["field 'output' must be a string"], patch={"data": {"path": "d.jsonl"}},
         files={"d.jsonl": '{"instruction": "Add.", "output": 5}\n' + ALPACA * 40}),
    Case("chat-row-ends-with-user", ["last message must have role 'assistant'"],
         patch={"data": {"path": "d.jsonl"}},
         files={"d.jsonl": '{"messages": [{"role": "user", "content": "hi"}]}\n' + ALPACA * 40}),
    Case("data-file-empty", ["the file has no rows"], patch={"data": {"path": "d.jsonl"}}, files={"d.jsonl": ""}),
    Case("data-too-few-rows", ["too few to split"], patch={"data": {"path": "d.jsonl"}},
         files={"d.jsonl": ALPACA * 2}),
    # unknown model
    Case("unknown-builtin-model", ["model.name_or_path", "builtin:huge"],
         patch={"model": {"name_or_path": "builtin:huge"}}),
    Case("unknown-hub-model", ["model.name_or_path", "no-such-org/no-such-model"],
         patch={"model": {"name_or_path": "no-such-org/no-such-model"}}),
    Case("mistyped-local-model", ["'my-modle'", "looked up as a hub id", "fix the path"],
         patch={"model": {"name_or_path": "my-modle"}}),
    # storage
    Case("storage-not-a-url", ["storage", "is not a database URL"], patch={"storage": "study.db"}),
    Case("storage-unreachable", ["cannot be opened", f"127.0.0.1:{CLOSED}"],
         patch={"storage": f"postgresql://lmtune@127.0.0.1:{CLOSED}/x"}),
    Case("storage-password-in-url", ["cannot be opened", "lmtune:***@"],
         patch={"storage": f"postgresql://lmtune:{SECRET}@127.0.0.1:{CLOSED}/x"}),
    Case("storage-password-from-env", ["cannot be opened"], env={"LMTUNE_STORAGE_PASSWORD": SECRET},
         patch={"storage": f"postgresql://lmtune@127.0.0.1:{CLOSED}/x"}),
    Case("storage-bad-port", ["cannot be opened", "lmtune:***@"],
         patch={"storage": f"postgresql://lmtune:{SECRET}@127.0.0.1:port/x"}),
    Case("storage-unknown-driver", ["cannot be opened", "nosuchdb://"], patch={"storage": "nosuchdb://h/x"}),
    Case("storage-folder-is-a-file", ["cannot create the folder"],
         patch={"storage": "sqlite:///{dir}/d.jsonl/study.db"}, files={"d.jsonl": ALPACA}),
    Case("cli-storage-not-a-url", ["--storage 'study.db'", "not a database URL"],
         args=[*RUN, "--storage", "study.db"]),
    Case("study-other-direction", ["created to minimize", "asks to maximize"],
         patch={"objective": {"direction": "maximize"}}),
    Case("study-other-metric", ["optimises 'eval_loss'", "'perplexity'"],
         patch={"objective": {"metric": "perplexity"}}),
    # resuming a study with settings its trials cannot be compared with, or a space Optuna cannot continue
    Case("resume-categorical-for-a-range", [f"{SPACE}.learning_rate: study 'test' already has trials sampled from "
                                            "a log-scale float range", "the choices [0.001, 0.01]", "new study_name"],
         patch={"search": {"space": {"learning_rate": [1e-3, 1e-2]}}}),
    Case("resume-other-data", ["study 'test' was run with other settings", "data.builtin.n_train: 300 -> 200",
                               "--allow-changed-config"], patch={"data": {"builtin": {"n_train": 200}}}),
    Case("resume-other-run-length", ["train.max_steps: 12 -> 24", "new study_name"],
         patch={"train": {"max_steps": 24}}),
    Case("resume-other-model", ["model.name_or_path: 'builtin:micro' -> 'builtin:tiny'"],
         patch={"model": {"name_or_path": "builtin:tiny"}}),
    Case("resume-other-data-file", ["data_files_sha256.path"], patch={"data": {"path": "d.jsonl"}},
         files={"d.jsonl": ALPACA * 40}),
    # study names are folder names too
    Case("study-name-parent-dir", ["'../escape' cannot be a study name"], patch={"study_name": "../escape"}),
    Case("study-name-absolute", ["cannot be a study name"], patch={"study_name": "/tmp/lmtune-escape"}),
    Case("study-name-too-long", ["cannot be a study name", "1-128"], patch={"study_name": "s" * 600}),
    Case("proxy-study-name-slash", ["stages.proxy.study_name", "cannot be a study name"],
         patch={"stages": {"proxy": {"study_name": "a/b"}}}),
    # small traps
    Case("data-not-utf8", ["d.jsonl, line 2, column 39: byte 0xe9 is not UTF-8"], patch={"data": {"path": "d.jsonl"}},
         files={"d.jsonl": ALPACA.encode() + b'{"instruction": "Echo.", "input": "caf\xe9", "output": "a"}\n'
                + ALPACA.encode() * 40}),
    Case("data-path-is-a-directory", ["data' is a directory", "give the JSONL or JSON file inside it"],
         patch={"data": {"path": "data"}},
         files={"data/train.jsonl": ALPACA * 40}),
    Case("batch-size-boolean", ["per_device_train_batch_size: True is a boolean"],
         patch={"train": {"per_device_train_batch_size": True}}),
    Case("space-boolean-batch-size", [f"{SPACE}.per_device_train_batch_size: value True is not allowed"],
         patch={"search": {"space": {"per_device_train_batch_size": [True, 16]}}}),
    Case("max-steps-and-epochs", ["max_steps (12) and num_train_epochs (2.0) are both set"],
         patch={"train": {"num_train_epochs": 2}}),
    Case("epochs-searched-with-max-steps", [f"{SPACE}.num_train_epochs: it has no effect with train.max_steps"],
         patch={"search": {"space": {"num_train_epochs": {"low": 1.0, "high": 3.0}}}}),
    Case("pruning-with-one-evaluation", ["train.eval_steps (12) is not below train.max_steps (12)", "'asha'"],
         patch={"search": {"strategy": "asha"}, "train": {"eval_steps": 12}}),
    Case("yaml-empty", ["is empty", "examples/quickstart.yaml"], yaml_text="# nothing yet\n"),
    # reading a study: a mistyped URL must not leave an empty database behind
    Case("status-mistyped-sqlite", ["no database file", "stdy.db"],
         args=["status", "--storage", "sqlite:///{dir}/stdy.db"]),
    Case("best-mistyped-sqlite", ["no database file", "stdy.db"],
         args=["best", "--storage", "sqlite:///{dir}/stdy.db"]),
    Case("status-unknown-study", ["no study 'other'", "['test']"],
         args=["status", "--storage", "sqlite:///{dir}/study.db", "--study", "other"]),
]


@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> tuple[dict[str, Any], Path]:
    """A real tiny study (two trials) whose database every case runs against a copy of."""
    home = tmp_path_factory.mktemp("existing")
    cfg = small_config(home, search={"n_trials": 2})
    study = tune(cfg)
    assert len(study.trials) == 2
    return cfg, home / "study.db"


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` over `base`, section by section; an empty mapping replaces (empties) its section."""
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(base[k], v) if v and isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _trials(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute("SELECT trial_id, number, state, datetime_complete FROM trials ORDER BY 1").fetchall()


def _fill(text: str, where: Path) -> str:
    return text.replace("{dir}", str(where)).replace("{config}", str(where / "exp.yaml"))


def _prepare(case: Case, cfg: dict[str, Any], db: Path, where: Path) -> list[str]:
    shutil.copy(db, where / "study.db")
    for name, text in case.files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (where / name).write_bytes(text)
        else:
            (where / name).write_text(text)
    cfg = _merge({**cfg, "storage": f"sqlite:///{where / 'study.db'}", "output_dir": str(where / "runs")},
                 case.patch)
    if isinstance(cfg.get("storage"), str):
        cfg["storage"] = _fill(cfg["storage"], where)
    (where / "exp.yaml").write_text(case.yaml_text if case.yaml_text is not None else yaml.safe_dump(cfg))
    return [_fill(a, where) for a in case.args or RUN]


def _assert_refused(output: str, exit_code: int, case: Case) -> None:
    message = output.strip()
    assert exit_code == 2, output
    assert "Traceback" not in output and message.startswith("error:"), output
    assert "\n\n" not in message, output  # one paragraph
    for text in case.expect:
        assert text in message, f"{text!r} not in {message!r}"
    assert SECRET not in output


def test_the_table_is_large_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_loses_nothing(case, existing, tmp_path, monkeypatch):
    cfg, db = existing
    args = _prepare(case, cfg, db, tmp_path)
    monkeypatch.chdir(tmp_path)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    res = CliRunner().invoke(app, args)
    _assert_refused(res.output, res.exit_code, case)
    assert (tmp_path / "study.db").read_bytes() == db.read_bytes()
    assert _trials(tmp_path / "study.db") == _trials(db)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written or created
    assert not (tmp_path / "pwned").exists()


SUBPROCESS_CASES = [c for c in CASES if c.id in ("storage-password-in-url", "row-missing-output")]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_installed_command_prints_no_traceback(case, existing, tmp_path):
    """The same refusals from the `lmtune` executable itself: stderr holds the paragraph and nothing else."""
    cfg, db = existing
    args = _prepare(case, cfg, db, tmp_path)
    exe = Path(sys.executable).parent / "lmtune"
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    _assert_refused(out.stderr, out.returncode, case)
    assert out.stdout == ""
    assert (tmp_path / "study.db").read_bytes() == db.read_bytes()



def test_an_unreachable_hub_is_said_at_once_without_retry_lines(existing, tmp_path):
    """A hub id while the hub cannot be reached (here a closed port on 127.0.0.1 as the endpoint): one message,
    not transformers' half a minute of 'Retrying in 8s' lines."""
    cfg, db = existing
    case = Case("hub-unreachable", ["'no-such-org/no-such-model' was looked up as a hub id", "cannot be reached",
                                    "not in the local cache"],
                patch={"model": {"name_or_path": "no-such-org/no-such-model"}})
    args = _prepare(case, cfg, db, tmp_path)
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": f"http://127.0.0.1:{CLOSED}", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([str(Path(sys.executable).parent / "lmtune"), *args], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    _assert_refused(out.stderr, out.returncode, case)
    assert "Retrying" not in out.stdout + out.stderr
    assert (tmp_path / "study.db").read_bytes() == db.read_bytes()
