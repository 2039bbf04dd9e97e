"""Quality against cost: multi-objective studies, constraints, the Pareto front and picking one point of it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from conftest import small_config
from typer.testing import CliRunner

from lmtune import records, tune
from lmtune.cli import app
from lmtune.config import load_config, validate_config
from lmtune.errors import ConfigError
from lmtune.objectives import parse_pick
from lmtune.records import StudyRecord, TrialRecord
from lmtune.report import build_report
from lmtune.results import best_trial, compare, pareto_front, pick_trial, ranked_trials
from lmtune.select import candidates
from lmtune.space import SearchSpace
from lmtune.strategies import create_sampler
from lmtune.study import Study

runner = CliRunner()
TWO = {"metrics": ["eval_loss", "flops"]}  # quality and training compute, both minimized
SPACE = {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}, "max_steps": [4, 8, 12]}


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Both objectives minimized: `a` is no worse anywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def two_objective(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, optuna.Study]:
    """A real 7-trial study on the built-in model, multi-objective TPE over the learning rate and run length."""
    tmp = tmp_path_factory.mktemp("mo")
    cfg = small_config(tmp, objective=TWO, train={"max_steps": 4},
                       search={"strategy": "tpe", "n_trials": 7, "n_startup_trials": 3, "space": SPACE})
    (tmp / "exp.yaml").write_text(yaml.safe_dump(cfg))
    return tmp, tune(cfg).optuna


def test_a_two_objective_studys_front_is_non_dominated(two_objective):
    _, study = two_objective
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.user_attrs[records.OBJECTIVES] == [{"name": "eval_loss", "direction": "minimize"},
                                                    {"name": "flops", "direction": "minimize"}]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 7 and TrialRecord(study.trials[0]).is_baseline  # the baseline stays trial 0
    for t in done:  # each value is what the trial measured
        assert t.values == [TrialRecord(t).metrics["eval_loss"], TrialRecord(t).metrics["flops"]]
        assert TrialRecord(t).metrics["peak_memory_bytes"] > 0 and TrialRecord(t).metrics["trainable_params"] > 0
    assert len({t.params["max_steps"] for t in done}) > 1  # runs of several lengths: flops differ
    front = pareto_front(study)
    assert front and all(not _dominates(tuple(a.values), tuple(b.values)) for a in front for b in front)
    on_front = {t.number for t in front}
    for t in done:  # every other trial is beaten by a point of the front
        assert t.number in on_front or any(_dominates(tuple(f.values), tuple(t.values)) for f in front)
    assert [t.number for t in ranked_trials(study)][:len(front)] == [t.number for t in front]
    assert best_trial(study).number == front[0].number  # the front's best on the first objective
    # The selection phase re-checks Pareto points: its candidates come from the front first.
    searched_front = on_front - {0}
    if searched_front:
        assert {c.trial for c in candidates(study, len(searched_front), include_baseline=False)} == searched_front
    # No single best model exists until a point is picked: none is kept.
    assert StudyRecord(study).best_model == {}


def test_pick_chooses_the_cheapest_trial_that_meets_the_limit(two_objective):
    tmp, study = two_objective
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    limit = sorted(TrialRecord(t).metrics["eval_loss"] for t in done)[len(done) // 2]
    meets = [t for t in done if TrialRecord(t).metrics["eval_loss"] <= limit]
    cheapest = min(TrialRecord(t).metrics["flops"] for t in meets)
    rule = f"eval_loss <= {limit!r}, minimize flops"
    assert TrialRecord(pick_trial(study, parse_pick(rule))).metrics["flops"] == cheapest

    res = runner.invoke(app, ["best", str(tmp / "exp.yaml"), "--pareto", "--pick", rule,
                              "-o", str(tmp / "best.yaml")])
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.output and "picked trial" in res.output
    reloaded = optuna.load_study(study_name="test", storage=f"sqlite:///{tmp / 'study.db'}")
    picked = StudyRecord(reloaded).picked
    chosen = reloaded.trials[picked["trial"]]
    assert TrialRecord(chosen).metrics["flops"] == cheapest and picked["rule"] == parse_pick(rule).text
    best = load_config(tmp / "best.yaml")  # best.yaml, the comparison and export all use the picked point
    assert best.train.max_steps == TrialRecord(chosen).hparams["max_steps"]
    assert best.train.learning_rate == TrialRecord(chosen).hparams["learning_rate"]
    assert "picked by" in compare(reloaded).verdict
    assert (tmp / "best_comparison.md").read_text().count("training FLOPs") == 1
    res = runner.invoke(app, ["export", str(tmp / "exp.yaml"), "-o", str(tmp / "export.yaml")])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp / "export.yaml").read_text())["train"] == yaml.safe_load(
        (tmp / "best.yaml").read_text())["train"]

    page = build_report(reloaded, tmp / "report.html").read_text()
    assert "Pareto front" in page and "picked" in page and "y: eval_loss" in page and "x: flops" in page

    res = runner.invoke(app, ["best", str(tmp / "exp.yaml"), "--pick", "eval_loss <= -1"])
    assert res.exit_code == 2 and "no trial meets 'eval_loss <= -1'" in res.output
    res = runner.invoke(app, ["best", str(tmp / "exp.yaml"), "--pick", "eval_loss < 3"])
    assert res.exit_code == 2 and "is not a limit" in res.output


def test_a_constraint_keeps_infeasible_trials_from_best():
    """x is the quality, x itself the constrained cost: the best trials by value break the limit."""
    for objectives in ([("q", "maximize")], [("q", "maximize"), ("cost", "minimize")]):
        study = Study("c", "memory://", space={"x": {"low": 0.0, "high": 1.0}}, strategy="random",
                      objectives=objectives, constraints=["flops <= 0.5"])
        study.optimize(lambda c: {"q": c.params["x"], "cost": c.params["x"] ** 2, "flops": c.params["x"]},
                       n_trials=12)
        done = study.optuna.trials
        infeasible = [t for t in done if t.params["x"] > 0.5]
        assert infeasible and all(not TrialRecord(t).feasible for t in infeasible)
        ranked = ranked_trials(study.optuna)
        assert ranked and all(t.params["x"] <= 0.5 for t in ranked)
        assert study.best_trial.params["x"] == max(t.params["x"] for t in done if t.params["x"] <= 0.5)
        assert all(t.params["x"] <= 0.5 for t in pareto_front(study.optuna))


def test_a_real_study_whose_every_trial_breaks_a_limit_has_no_best(tmp_path):
    cfg = small_config(tmp_path, objective={"metric": "eval_loss", "constraints": ["eval_loss <= 1e-6"]},
                       search={"n_trials": 2})
    study = tune(cfg)
    assert all(t.constraints == {"eval_loss <= 1e-06": t.values[0] - 1e-6} for t in study.trials)
    assert best_trial(study.optuna) is None and StudyRecord(study.optuna).best_model == {}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["best", str(tmp_path / "exp.yaml")])
    assert res.exit_code == 1 and "no feasible completed trial: all 2 break objective.constraints" in res.output


def test_a_single_objective_study_is_unchanged(tmp_path):
    """The same sampler proposes the same points as a plain Optuna study, the values are floats, and neither the
    fingerprint nor the stored attributes gained a key (so older studies resume)."""
    space = SearchSpace({"x": {"low": -2.0, "high": 2.0}, "k": ["a", "b"]})

    def f(x: float, k: str) -> float:
        return (x - 0.3) ** 2 + (k == "b")

    study = Study("s", f"sqlite:///{tmp_path / 's.db'}", space=space, strategy="tpe", metric="loss",
                  direction="minimize", n_startup_trials=3)
    study.optimize(lambda c: {"loss": f(**c.params)}, n_trials=8)
    plain = optuna.create_study(direction="minimize", sampler=create_sampler("tpe", space, 0, 3))
    plain.optimize(lambda t: f(**space.suggest(t)), n_trials=8)
    assert [t.params for t in study.trials] == [t.params for t in plain.trials]
    assert [t.value for t in study.trials] == [t.value for t in plain.trials]
    assert records.OBJECTIVES not in study.optuna.user_attrs
    assert validate_config({"objective": {"metric": "eval_loss"}}).fingerprint()["objective"] == {
        "metric": "eval_loss", "direction": "minimize"}


@pytest.mark.parametrize("objective, search, match", [
    ({"metrics": ["eval_loss", "flop"]}, {}, "unknown metric 'flop'"),
    ({"metrics": []}, {}, "objective.metrics is empty"),
    ({"metrics": ["eval_loss", "eval_loss"]}, {}, "names a metric twice"),
    ({"metric": "exact_match", "metrics": ["eval_loss", "flops"]}, {}, "is not the first of objective.metrics"),
    ({"constraints": ["flops < 1e9"]}, {}, "is not a limit"),
    ({"constraints": ["flopz <= 1e9"]}, {}, "unknown metric 'flopz'"),
    ({"constraints": ["flops <= lots"]}, {}, "'lots' is not a number"),
    (TWO, {"strategy": "auto"}, "prunes or exploits by one metric"),
    (TWO, {"strategy": "pbt"}, "prunes or exploits by one metric"),
    (TWO, {"pruner": "median"}, "Optuna's pruners compare one value"),
    (TWO, {"strategy": "tpe", "warm_start": ["old"]}, "past studies are modelled by one objective"),
    ({"constraints": ["flops <= 1e12"]}, {"strategy": "pbt"}, "population-based training copies and ranks"),
])
def test_objective_config_errors_name_the_field_and_the_fix(tmp_path, objective, search, match):
    cfg = small_config(tmp_path, objective=objective, search=search)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_pick_rules_parse_with_clear_errors():
    rule = parse_pick("exact_match >= 0.9, minimize flops")
    assert rule.text == "exact_match >= 0.9, minimize flops"
    assert parse_pick("peak_memory_bytes <= 2e10").goal is None
    for bad, match in (("minimize flops, maximize exact_match", "at most one"), ("", "is empty"),
                       ("fastest", "is not a limit"), ("minimize speed", "unknown metric 'speed'")):
        with pytest.raises(ValueError, match=match):
            parse_pick(bad)


def test_an_objective_that_does_not_measure_a_second_objective_stops_the_study():
    study = Study("m", "memory://", space={"x": {"low": 0.0, "high": 1.0}}, strategy="random",
                  objectives=[("q", "maximize"), ("flops", "minimize")])
    study.optimize(lambda c: {"q": c.params["x"]}, n_trials=3)
    failed = study.optuna.trials[0]
    assert failed.state == optuna.trial.TrialState.FAIL and TrialRecord(failed).setup_failure
    assert "objective.metrics 'flops' needs the metric 'flops'" in TrialRecord(failed).fail_reason
    assert len(study.optuna.trials) == 2  # stopped at once; the trial is queued to run once the objective is fixed


def test_a_multi_objective_study_that_names_no_strategy_gets_gp_with_three_startup_trials(tmp_path):
    from lmtune.study import open_study

    cfg = validate_config({**small_config(tmp_path, objective=TWO), "search": {"n_trials": 20, "space": SPACE}})
    assert cfg.search.strategy == "gp"
    sampler = open_study(cfg).optuna.sampler
    assert isinstance(sampler, optuna.samplers.GPSampler) and sampler._n_startup_trials == 3
    chosen = validate_config({**small_config(tmp_path, objective=TWO), "search": {"strategy": "nsga2"}})
    assert chosen.search.strategy == "nsga2"
    assert validate_config(small_config(tmp_path)).search.strategy == "random"  # single objective: as given
