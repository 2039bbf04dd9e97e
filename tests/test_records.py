"""The stored-trial contract: keys named once (records.py), and databases written by earlier versions still open.

`fixtures/study_v0.db` was written by lmtune at commit 0b264b9, before `records.py` existed: a random search
with a selection phase (study `search`) and a population-based training run (study `pbt`) on the built-in model.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from lmtune import records
from lmtune.cli import app
from lmtune.records import StudyRecord, TrialRecord
from lmtune.results import compare, load_study

FIXTURE = Path(__file__).parent / "fixtures" / "study_v0.db"
SRC = Path(__file__).resolve().parents[1] / "src" / "lmtune"
runner = CliRunner()


@pytest.fixture
def old_db(tmp_path: Path) -> str:
    db = tmp_path / "study_v0.db"
    shutil.copy(FIXTURE, db)
    return f"sqlite:///{db}"


def _constants() -> set[str]:
    return {v for k, v in vars(records).items() if k.isupper() and isinstance(v, str)}


def test_every_key_in_an_old_database_is_named_in_records(old_db: str) -> None:
    store = optuna.storages.RDBStorage(old_db)
    for summary in optuna.get_all_study_summaries(store):
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        assert set(study.user_attrs) <= _constants(), study.study_name
        for t in study.trials:
            assert set(t.user_attrs) <= _constants(), (study.study_name, t.number)


def test_old_trials_read_through_the_typed_records(old_db: str) -> None:
    search, pbt = load_study(old_db, "search"), load_study(old_db, "pbt")
    base = TrialRecord(search.trials[0])
    assert base.is_baseline and not TrialRecord(search.trials[1]).is_baseline
    assert base.metrics["eval_loss"] == search.trials[0].value
    assert base.cost["fte"] == 1.0 and base.cost["steps"] == base.cost["planned_steps"] == 12
    assert [c["step"] for c in base.curve] == [6.0, 12.0]
    assert base.hparams is not None and base.trained_hparams["learning_rate"] == 2e-5
    assert StudyRecord(search).metric == "eval_loss" and not StudyRecord(search).maximize
    assert StudyRecord(search).selection["winner"] == 2 and StudyRecord(search).best_model["trial"] == 2

    members = [TrialRecord(t) for t in pbt.trials if TrialRecord(t).pbt_member is not None]
    assert sorted(m.pbt_member for m in members) == [0, 1]
    for m in members:  # a member's trained values come from the end of its schedule
        assert m.hparams is None and m.trained_hparams == m.trial.user_attrs["hparams_final"]
        assert m.schedule[0]["step"] == 0 and isinstance(m.lineage, list)
    assert StudyRecord(pbt).pbt["best_member"] in (0, 1)


def test_an_old_database_opens_with_status_best_and_report(old_db: str, tmp_path: Path) -> None:
    res = runner.invoke(app, ["status", "--storage", old_db, "--study", "search"])
    assert res.exit_code == 0, res.output
    assert "4 finished" in res.output and "baseline" in res.output

    out = tmp_path / "best.yaml"
    res = runner.invoke(app, ["best", "--storage", old_db, "--study", "search", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "tuned beats the baseline on test data" in res.output
    study = load_study(old_db, "search")
    assert yaml.safe_load(out.read_text())["train"]["learning_rate"] == study.trials[2].params["learning_rate"]
    comparison = compare(study)
    assert comparison is not None and comparison.improved
    assert any(name.startswith("test eval_loss (2 seeds)") for name, _, _ in comparison.rows)

    for name, section in (("search", "Selection"), ("pbt", "lineage")):
        html = tmp_path / f"{name}.html"
        res = runner.invoke(app, ["report", "--storage", old_db, "--study", name, "-o", str(html)])
        assert res.exit_code == 0, res.output
        assert section in html.read_text()


def _literal_keys(tree: ast.AST) -> list[tuple[int, str]]:
    """Trial/study attribute keys written as string literals: `set_user_attr("x", ...)`, `ctx.set("x", ...)`,
    `user_attrs.get("x")`, `user_attrs["x"]`, `"x" in user_attrs`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, args = node.func.attr, node.args
            is_attrs = isinstance(node.func.value, ast.Attribute) and node.func.value.attr.endswith("_attrs")
            key = (args[1] if name.startswith("set_trial_") and len(args) > 1 else args[0]) if args else None
            if (name in ("set_user_attr", "set_trial_user_attr", "set_trial_system_attr")
                    or (name == "set" and isinstance(node.func.value, ast.Name) and node.func.value.id == "ctx")
                    or (name == "get" and is_attrs)) and isinstance(key, ast.Constant):
                found.append((node.lineno, str(key.value)))
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
              and node.value.attr.endswith("_attrs") and isinstance(node.slice, ast.Constant)):
            found.append((node.lineno, str(node.slice.value)))
        elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
              and any(isinstance(c, ast.Attribute) and c.attr.endswith("_attrs") for c in node.comparators)):
            found.append((node.lineno, str(node.left.value)))
    return found


def test_stored_keys_are_named_only_in_records() -> None:
    # Optuna's own system attributes (the grid sampler's) are Optuna's contract, not lmtune's.
    optuna_keys = {"grid_id", "search_space", "fixed_params"}
    stray = [f"{p.relative_to(SRC)}:{line}: {key!r}" for p in sorted(SRC.rglob("*.py")) if p.name != "records.py"
             for line, key in _literal_keys(ast.parse(p.read_text())) if key not in optuna_keys]
    assert not stray, "use the constants of lmtune.records:\n" + "\n".join(stray)


def test_the_literal_key_finder_finds_each_form() -> None:
    code = ('t.set_user_attr("a", 1)\nctx.set("b", 2)\nt.user_attrs.get("c")\nt.user_attrs["d"]\n'
            '"e" in t.user_attrs\ns._storage.set_trial_user_attr(i, "f", 3)\nt.set_user_attr(records.COST, 1)')
    assert [k for _, k in _literal_keys(ast.parse(code))] == ["a", "b", "c", "d", "e", "f"]


def test_proxy_rungs_read_a_single_proxy_and_a_ladder_alike():
    study = optuna.create_study()
    assert StudyRecord(study).proxy_rungs == []
    study.set_user_attr(records.STAGES, {"proxy_study": "p", "proxy_trials": 4, "proxy_fte_target": 0.5})
    assert StudyRecord(study).proxy_rungs == [{"study": "p", "trials": 4, "fte_target": 0.5}]
    ladder = [{"study": "p-1", "trials": 3, "fte_target": 0.1}, {"study": "p-2", "trials": 2, "fte_target": 0.3}]
    study.set_user_attr(records.STAGES, {"proxy_study": "p-2", "proxy_trials": 5, "proxy_fte_target": 0.4,
                                         "rungs": ladder})
    assert StudyRecord(study).proxy_rungs == ladder
