"""The command line, driven as a user would: YAML files in a directory, `lmtune run/train/status/best`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import small_config
from typer.testing import CliRunner

from lmtune.builtin.model import materialize
from lmtune.cli import app
from lmtune.config import load_config

runner = CliRunner()


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_then_status_and_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_yaml(tmp_path / "exp.yaml", small_config(tmp_path))
    res = runner.invoke(app, ["run", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "baseline vs tuned" in res.output and "study cost: 3 trials" in res.output
    assert not re.search(r"^trial \d+ ", res.output, flags=re.M)  # --quiet: the summary, no per-trial lines
    assert ("tuned beats the baseline" in res.output) != ("baseline is already the best" in res.output)
    assert (tmp_path / "best_comparison.md").is_file() and (tmp_path / "best_comparison.csv").is_file()
    best = load_config(tmp_path / "best.yaml")  # the written best config is itself a valid experiment
    assert best.train.max_steps == 12

    res = runner.invoke(app, ["status", "--storage", f"sqlite:///{tmp_path / 'study.db'}"])
    assert res.exit_code == 0 and "3 finished" in res.output and "baseline" in res.output
    res = runner.invoke(app, ["best", str(cfg), "-o", str(tmp_path / "b2.yaml")])
    assert res.exit_code == 0 and (tmp_path / "b2.yaml").is_file()
    # More trials on the same study: it resumes.
    res = runner.invoke(app, ["run", str(cfg), "--quiet", "--n-trials", "4"])
    assert res.exit_code == 0 and "study cost: 4 trials" in res.output and "nothing to run" not in res.output
    res = runner.invoke(app, ["run", str(cfg), "--quiet", "--n-trials", "4"])  # the budget is spent: said so
    assert res.exit_code == 0 and "nothing to run: study 'test' has spent its budget (4 finished" in res.output


def test_user_jsonl_and_saved_model_dir(tmp_path):
    """The quickstart YAML pointed at a user's own JSONL file and a save_pretrained model directory."""
    rows = [{"instruction": "Double the number.", "input": str(i), "output": str(2 * i)} for i in range(120)]
    rows += [{"messages": [{"role": "user", "content": f"Echo {w}"}, {"role": "assistant", "content": w}]}
             for w in ("alpha", "beta", "gamma", "delta") * 10]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    model_dir = tmp_path / "my-model"
    import shutil

    shutil.copytree(materialize("builtin:micro"), model_dir)  # any save_pretrained directory would do
    cfg = small_config(tmp_path, model={"name_or_path": "./my-model"},
                       data={"path": "data/mine.jsonl", "validation_fraction": 0.1, "test_fraction": 0.1})
    path = write_yaml(tmp_path / "mine.yaml", cfg)
    res = runner.invoke(app, ["run", str(path), "--quiet", "-o", str(tmp_path / "best.yaml")])
    assert res.exit_code == 0, res.output
    assert "study cost: 3 trials" in res.output and "fail" not in res.output.lower()


def test_train_once_with_overrides_and_save(tmp_path):
    cfg = write_yaml(tmp_path / "exp.yaml", small_config(tmp_path))
    out = tmp_path / "model"
    res = runner.invoke(app, ["train", str(cfg), "--set", "learning_rate=1e-2", "--set", "optim=sgd",
                              "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert "exact_match" in res.output and (out / "model.safetensors").is_file()
    run = json.loads((out / "lmtune_run.json").read_text())
    assert run["train"]["learning_rate"] == 1e-2 and run["train"]["optim"] == "sgd"
    res = runner.invoke(app, ["train", str(cfg), "--set", "learning_rate"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = runner.invoke(app, ["train", str(cfg), "--set", "optim=lion"])
    assert res.exit_code == 2 and "optim" in res.output
    res = runner.invoke(app, ["train", str(cfg), "--set", "learnig_rate=1e-3"])
    assert res.exit_code == 2 and "train.learnig_rate: unknown key (did you mean 'learning_rate'?)" in res.output


def test_errors_are_one_paragraph_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  space:\n    learning_rate: {low: 1e-2, high: 1e-4}\n")
    for args in (["run", str(bad)], ["run", str(tmp_path / "missing.yaml")],
                 ["status", "--storage", f"sqlite:///{tmp_path / 'empty.db'}"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "error:" in res.output and "Traceback" not in res.output


def test_bad_data_row_fails_before_any_trial_with_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    cfg = small_config(tmp_path, data={"path": "d.jsonl"})
    res = runner.invoke(app, ["run", str(write_yaml(tmp_path / "e.yaml", cfg)), "--quiet"])
    assert res.exit_code == 2 and "line 2" in res.output and "missing field 'output'" in res.output
    assert not (tmp_path / "study.db").exists()  # rejected before the study was created


def test_rejected_run_leaves_an_existing_study_untouched(tmp_path):
    cfg = small_config(tmp_path)
    path = write_yaml(tmp_path / "exp.yaml", cfg)
    assert runner.invoke(app, ["run", str(path), "--quiet"]).exit_code == 0
    before = (tmp_path / "study.db").read_bytes()
    cfg["model"] = {"name_or_path": "./no-such-model"}
    res = runner.invoke(app, ["run", str(write_yaml(tmp_path / "exp.yaml", cfg)), "--quiet"])
    assert res.exit_code == 2 and "no-such-model" in res.output
    assert (tmp_path / "study.db").read_bytes() == before


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "lmtune"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "train", "status", "best"):
        assert command in out


def test_a_run_whose_every_trial_fails_exits_1_and_so_does_best(tmp_path):
    """Trials that fail for their parameters (here LoRA target modules the model lacks) count against the
    budget, and a run that finished none says so with exit code 1 instead of looking like success."""
    cfg = small_config(tmp_path, train={"use_lora": True, "lora_target_modules": ["no_such_proj"]},
                       search={"n_trials": 2})
    res = runner.invoke(app, ["run", str(write_yaml(tmp_path / "e.yaml", cfg)), "--quiet"])
    assert res.exit_code == 1, res.output
    assert "no trial of this run finished: 2 failed" in res.output and "no_such_proj" in res.output
    res = runner.invoke(app, ["best", str(tmp_path / "e.yaml"), "-o", str(tmp_path / "b.yaml")])
    assert res.exit_code == 1 and "no completed trial" in res.output and not (tmp_path / "b.yaml").exists()


def test_a_trial_that_fails_on_the_data_stops_the_study_without_using_the_budget(tmp_path):
    """An augmentation function that returns a broken row fails every run whatever its parameters: the study
    stops after the first such trial, which is not counted, so fixing the function and running again resumes
    with the whole budget."""
    (tmp_path / "aug.py").write_text("def bad(row, rng):\n    return {'instruction': 5}\n")
    cfg = small_config(tmp_path, train={"augmentation": "aug.py:bad", "augmentation_ratio": 1.0})
    path = write_yaml(tmp_path / "e.yaml", cfg)
    res = runner.invoke(app, ["run", str(path), "--quiet"])
    assert res.exit_code == 1 and "no trial of this run finished: 1 failed" in res.output, res.output
    from lmtune.results import load_study

    trials = load_study(cfg["storage"], "test").trials  # the failed baseline, and its rerun queued
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"] and trials[0].user_attrs["setup_failure"] is True
    assert "DataError" in trials[0].user_attrs["fail_reason"] and trials[1].user_attrs["baseline"] is True
    (tmp_path / "aug.py").write_text("def bad(row, rng):\n    return dict(row)\n")
    res = runner.invoke(app, ["run", str(path), "--quiet"])
    assert res.exit_code == 0 and "study cost: 4 trials" in res.output, res.output  # 3 counted + the failed one


def test_resuming_with_changed_settings_needs_allow_changed_config(tmp_path):
    cfg = small_config(tmp_path, search={"n_trials": 2})
    path = write_yaml(tmp_path / "e.yaml", cfg)
    assert runner.invoke(app, ["run", str(path), "--quiet"]).exit_code == 0
    cfg["train"]["max_steps"], cfg["search"]["n_trials"] = 18, 3
    write_yaml(path, cfg)
    res = runner.invoke(app, ["run", str(path), "--quiet"])
    assert res.exit_code == 2 and "train.max_steps: 12 -> 18" in res.output
    res = runner.invoke(app, ["run", str(path), "--quiet", "--allow-changed-config"])
    assert res.exit_code == 0 and "study cost: 3 trials" in res.output, res.output
    cfg["search"]["n_trials"] = 4  # the accepted settings are the study's now
    res = runner.invoke(app, ["run", str(write_yaml(path, cfg)), "--quiet"])
    assert res.exit_code == 0 and "study cost: 4 trials" in res.output, res.output


def test_a_relative_sqlite_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    cfg = small_config(tmp_path, storage="sqlite:///studies/s.db")
    path = write_yaml(tmp_path / "exp" / "e.yaml", cfg)
    monkeypatch.chdir(tmp_path)
    assert load_config(path).storage == f"sqlite:///{tmp_path / 'exp' / 'studies' / 's.db'}"
    res = runner.invoke(app, ["run", str(path), "--quiet", "-o", str(tmp_path / "b.yaml")])
    assert res.exit_code == 0 and (tmp_path / "exp" / "studies" / "s.db").is_file(), res.output
    res = runner.invoke(app, ["status", "exp/e.yaml"])
    assert res.exit_code == 0 and "3 finished" in res.output
