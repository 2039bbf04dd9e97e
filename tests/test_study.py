"""End-to-end studies of real (tiny) fine-tuning trials on SQLite."""

import io
import math
import os
import signal
import sqlite3

import optuna
import pytest
from conftest import small_config
from optuna.trial import TrialState
from rich.console import Console

from lmtune import Study, tune
from lmtune.config import validate_config
from lmtune.display import log_trial
from lmtune.errors import ConfigError
from lmtune.results import best_config, compare, load_study, study_cost
from lmtune.train.trainer import TrainResult
from lmtune.trial import keep_best_model


def test_study_stores_params_metrics_curve_cost_and_baseline(tmp_path):
    study = tune(small_config(tmp_path))
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    base = trials[0]
    assert base.user_attrs["baseline"] is True
    assert base.user_attrs["hparams"]["learning_rate"] == 3e-3  # the train: value, not a sample
    for t in trials:
        assert set(t.user_attrs["metrics"]) >= {"eval_loss", "perplexity", "exact_match", "token_f1",
                                                "tokens_per_second"}
        assert t.value == t.user_attrs["metrics"]["eval_loss"]
        assert [c["step"] for c in t.user_attrs["curve"]] == [6, 12]
        assert sorted(t.intermediate_values) == [6, 12]
        assert t.user_attrs["cost"]["steps"] == 12 and t.user_attrs["cost"]["fte"] == 1.0
    assert len({t.params["learning_rate"] for t in trials}) == 3
    # The rows really are in the SQLite file, readable by any Optuna client.
    db = tmp_path / "study.db"
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0] == 3
    loaded = load_study(f"sqlite:///{db}")
    assert loaded.study_name == "test" and len(loaded.trials) == 3
    assert study_cost(loaded.trials)["fte"] == 3.0


def test_only_the_best_model_is_kept_and_it_reproduces_its_validation_loss(tmp_path):
    study = tune(small_config(tmp_path, search={"strategy": "random", "n_trials": 4, "seed": 3, "space": {
        "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}}}))
    kept = study.optuna.user_attrs["best_model"]
    assert kept["trial"] == study.best_trial.number
    runs = tmp_path / "runs" / "test"
    assert [p.name for p in runs.iterdir()] == ["best-model"]  # non-best models were removed
    # The saved model loads through the user-facing path and scores what the trial scored.
    cfg = validate_config(small_config(tmp_path, model={"name_or_path": kept["dir"]}))
    from lmtune.train.trainer import Trainer

    loss = Trainer(cfg.model, cfg.data, cfg.train).setup().evaluate()["eval_loss"]
    assert loss == pytest.approx(study.best_trial.value, rel=1e-5)


def test_a_better_trial_after_a_selection_replaces_it(tmp_path):
    """A study resumed after `lmtune select` that finds a better trial keeps that trial's model, so the old
    selection (whose winner's model is gone) no longer decides best.yaml or the export."""
    class SavingTrainer:  # keep_best_model only asks the trainer to save itself
        def save(self, path, result):
            path.mkdir(parents=True)
            (path / "model.safetensors").write_text(str(result.metrics))

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="minimize")
    study.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))
    study.set_user_attr("selection", {"winner": 0, "candidates": []})
    study.set_user_attr("best_model", {"trial": 0, "metrics": {"eval_loss": 1.0}})
    best = tmp_path / "best-model"
    keep_best_model(study, SavingTrainer(), TrainResult({"eval_loss": 2.0}), 1, best, "eval_loss")
    assert study.user_attrs["selection"] and not best.exists()  # a worse trial changes nothing
    keep_best_model(study, SavingTrainer(), TrainResult({"eval_loss": 0.5}), 2, best, "eval_loss")
    assert study.user_attrs["selection"] is None and study.user_attrs["best_model"]["trial"] == 2
    assert "0.5" in (best / "model.safetensors").read_text()


def test_rerun_resumes_and_counts_trials_already_done(tmp_path):
    cfg = small_config(tmp_path)
    tune(cfg)
    cfg["search"]["n_trials"] = 5
    study = tune(cfg)
    assert len(study.trials) == 5
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1  # baseline enqueued once
    # The resumed random search proposes new points, not the ones its first run already trained.
    assert len({t.params["learning_rate"] for t in study.trials}) == 5
    assert len(tune(cfg).trials) == 5  # budget reached: nothing more runs


def test_diverged_trials_are_pruned_and_the_study_goes_on(tmp_path):
    cfg = small_config(tmp_path, search={
        "strategy": "grid", "n_trials": 10,
        "space": {"learning_rate": {"low": 1e-3, "high": 1e6, "values": [3e-3, 1e6]}, "optim": ["sgd"],
                  "max_grad_norm": 0.0, "momentum": 0.0},
    }, train={"optim": "sgd", "learning_rate": 1e-3, "max_steps": 30, "eval_steps": 30})
    study = tune(cfg)
    by_lr = {t.params.get("learning_rate"): t for t in study.trials if not t.user_attrs.get("baseline")}
    assert len(study.trials) == 3  # the baseline, then a grid of two points, then the grid is exhausted
    diverged = by_lr[1e6]
    assert diverged.state == TrialState.PRUNED and diverged.user_attrs["stop_reason"] == "diverged"
    assert diverged.user_attrs["prune_reason"].startswith("diverged: training loss is nan")
    assert "fail_reason" not in diverged.user_attrs and diverged.user_attrs["cost"]["steps"] >= 1
    assert by_lr[3e-3].state == TrialState.COMPLETE
    assert len(tune(cfg).trials) == 3  # an exhausted grid runs nothing more when resumed


def test_a_grid_counts_the_baseline_as_its_point_and_resumes_without_repeats(tmp_path):
    cfg = small_config(tmp_path, train={"learning_rate": 3e-3}, search={"strategy": "grid", "n_trials": 2, "space": {
        "learning_rate": {"low": 1e-4, "high": 1e-2, "values": [1e-4, 3e-3, 1e-2]},
        "per_device_train_batch_size": [8, 16]}})  # the baseline (3e-3, 16) is one of the 6 points
    assert len(tune(cfg).trials) == 2
    cfg["search"]["n_trials"] = 20
    trials = tune(cfg).trials
    points = {(t.params["learning_rate"], t.params["per_device_train_batch_size"]) for t in trials}
    assert len(trials) == 6 and len(points) == 6  # every point once, the baseline's included


def test_best_is_compared_with_the_baseline_and_exported(tmp_path):
    cfg = small_config(tmp_path, train={"learning_rate": 1e-5}, search={
        "strategy": "grid", "n_trials": 5, "space": {"learning_rate": {"low": 1e-5, "high": 1e-2,
                                                                        "values": [1e-2]}}})
    study = tune(cfg)
    comp = compare(study.optuna)
    assert comp is not None and comp.improved and "tuned beats the baseline" in comp.verdict
    assert ("learning_rate", 1e-5, 1e-2) in comp.rows
    best = validate_config(best_config(study.optuna))
    assert best.train.learning_rate == 1e-2 and best.train.max_steps == 12


def test_a_poor_learning_rate_scores_worse_than_a_good_one(tmp_path):
    """On the built-in task the learning rate must matter: that is what there is to tune."""
    cfg = small_config(tmp_path, model={"name_or_path": "builtin:tiny"},
                       data={"builtin": {"n_train": 2000, "n_validation": 100, "n_test": 20}},
                       train={"max_steps": 120, "eval_steps": 120, "per_device_train_batch_size": 32,
                              "eval_max_samples": 100, "learning_rate": 1e-5},
                       search={"strategy": "grid", "n_trials": 2,
                               "space": {"learning_rate": {"low": 1e-5, "high": 1e-2, "values": [3e-3]}}},
                       objective={"metric": "exact_match"})
    trials = tune(cfg).trials
    poor, good = trials[0].user_attrs["metrics"], trials[1].user_attrs["metrics"]
    assert good["eval_loss"] < poor["eval_loss"] - 1.0
    assert good["exact_match"] > poor["exact_match"] + 0.1


def test_generic_study_optimises_a_user_function(tmp_path):
    calls = []

    def objective(trial):
        x = trial.params["x"]
        for step in range(3):
            trial.report(step, {"loss": (x - 1) ** 2 + 1 / (step + 1)})
        calls.append(trial.number)
        return {"loss": (x - 1) ** 2}

    study = Study("fn", f"sqlite:///{tmp_path / 'fn.db'}", space={"x": {"low": -5.0, "high": 5.0}},
                  strategy="tpe", metric="loss", direction="minimize", n_startup_trials=5, baseline={"x": 4.0})
    study.optimize(objective, n_trials=25)
    assert len(calls) == 25 and study.baseline_trial.params == {"x": 4.0}
    assert abs(study.best_trial.params["x"] - 1) < 0.5
    assert study.trials[1].intermediate_values == pytest.approx({0: study.trials[1].value + 1,
                                                                 1: study.trials[1].value + 0.5,
                                                                 2: study.trials[1].value + 1 / 3})


def test_objective_errors_and_nan_are_failures_with_reasons(tmp_path):
    def objective(trial):
        if trial.number == 0:
            raise RuntimeError("out of cheese")
        return math.nan if trial.number == 1 else 1.0

    study = Study("err", f"sqlite:///{tmp_path / 'e.db'}", space={"x": [1, 2]}, strategy="random")
    study.optimize(objective, n_trials=3)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"] == "RuntimeError: out of cheese"
    assert "nan" in study.trials[1].user_attrs["fail_reason"]


def test_reopening_with_another_objective_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    Study("s", url, metric="loss", direction="minimize")
    with pytest.raises(ConfigError, match="created to minimize"):
        Study("s", url, metric="loss", direction="maximize")
    with pytest.raises(ConfigError, match="optimises 'loss'"):
        Study("s", url, metric="acc", direction="minimize")
    with pytest.raises(ConfigError, match="cannot be opened"):
        Study("s", "postgresql://user:secret@127.0.0.1:1/db")
    try:
        Study("s", "postgresql://user:secret@127.0.0.1:1/db")
    except ConfigError as e:
        assert "secret" not in str(e)
    assert optuna.load_study(study_name="s", storage=url).user_attrs["metric"] == "loss"


def test_an_interrupted_trial_is_queued_again_and_not_counted(tmp_path):
    """Ctrl-C in the baseline: it fails with the reason, waits to run again with the baseline's values, and the
    next run trains it and counts it once; the comparison then uses the completed baseline."""
    def study() -> Study:
        return Study("s", f"sqlite:///{tmp_path / 's.db'}", space={"x": {"low": 0.0, "high": 1.0}},
                     strategy="random", metric="loss", direction="minimize", baseline={"x": 0.5})

    def interrupted(ctx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study().optimize(interrupted, n_trials=3)
    s = study()
    (cut, queued) = s.trials
    assert cut.state == TrialState.FAIL and cut.user_attrs["fail_reason"].startswith("interrupted")
    assert queued.state == TrialState.WAITING and queued.user_attrs["baseline"] and queued.params == {"x": 0.5}
    s.optimize(lambda ctx: {"loss": ctx.params["x"]}, n_trials=3)
    assert [t.state for t in s.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert s.baseline_trial.number == 1 and s.trials[1].params == {"x": 0.5}
    assert compare(s.optuna).rows[-3] == ("validation loss", 0.5, s.best_trial.value)


@pytest.mark.parametrize(("tuned_optim", "shown", "optim_spec"), [
    ("adamw", False, {"type": "categorical", "choices": ["adamw", "sgd"]}),
    ("sgd", True, {"type": "categorical", "choices": ["adamw", "sgd"]}),
    ("sgd", True, {"type": "fixed", "value": "sgd"})])  # a fixed value is no Optuna param, yet decides
def test_an_unused_conditional_parameter_is_not_shown(tuned_optim, shown, optim_spec):
    """momentum is searched only with sgd: an adamw trial's default momentum is no tuned value."""
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("metric", "loss")
    study.set_user_attr("config", {"search": {"space": {
        "optim": optim_spec,
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "condition": {"optim": "sgd"}}}}})
    for value, optim, attrs in ((1.0, "adamw", {"baseline": True}), (0.5, tuned_optim, {})):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}, user_attrs={
            **attrs, "metrics": {"loss": value}, "hparams": {"optim": optim, "momentum": 0.9}}))
    names = [r[0] for r in compare(study).rows]
    assert "optim" in names and ("momentum" in names) == shown
    logged = io.StringIO()
    log_trial(Console(file=logged, width=200))(study, study.trials[1])
    assert ("momentum=0.9" in logged.getvalue()) == shown


@pytest.mark.parametrize("hook", ["before_trial", "sample_independent"])
def test_ctrl_c_in_optunas_bookkeeping_fails_and_requeues_the_trial(tmp_path, monkeypatch, hook):
    """Ctrl-C landing while Optuna creates a trial (before its heartbeat starts) or samples its parameters:
    the trial is failed and queued again like one cut short in training, never left RUNNING with no heartbeat
    (a zombie that an exact n_trials budget would wait on forever)."""
    study = Study("c", f"sqlite:///{tmp_path / 'c.db'}", space={"x": {"low": 0.0, "high": 1.0}}, strategy="random",
                  metric="loss", direction="minimize", seed=0, heartbeat_interval=1)

    def ctrl_c(*args, **kwargs):
        monkeypatch.undo()
        os.kill(os.getpid(), signal.SIGINT)
        return getattr(study.optuna.sampler, hook)(*args, **kwargs)

    monkeypatch.setattr(study.optuna.sampler, hook, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(lambda ctx: {"loss": ctx.params["x"]}, n_trials=2)
    cut, queued = study.trials
    assert (cut.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    assert cut.user_attrs["fail_reason"].startswith("interrupted") and queued.params == cut.params
    study.optimize(lambda ctx: {"loss": ctx.params["x"]}, n_trials=2)
    assert study.n_finished == 2 and study.trials[1].state == TrialState.COMPLETE  # the rerun, then a new trial


@pytest.mark.parametrize("strategy", ["random", "grid"])
def test_workers_propose_different_points_but_share_the_grid_order(tmp_path, strategy):
    """Worker k of a study samples with seed + k; a grid's points must come in one order for every worker."""
    space = {"x": {"low": 0.0, "high": 1.0}} if strategy == "random" else {"x": list(range(8))}

    def first_proposals(worker, db):
        study = Study("w", f"sqlite:///{tmp_path / db}", space=space, strategy=strategy, seed=0, worker=worker)
        trials = [study.optuna.ask() for _ in range(3)]
        return [study.space.suggest(t)["x"] for t in trials]

    assert first_proposals(0, "a.db") == first_proposals(0, "b.db")
    assert (first_proposals(1, "c.db") == first_proposals(0, "d.db")) == (strategy == "grid")


def test_a_grid_runs_every_queued_rerun_before_it_stops(tmp_path):
    """Two grid points cut short (their workers interrupted) are queued again: resuming runs both reruns, though
    every grid point counts as visited once the first rerun is done."""
    study = Study("g", f"sqlite:///{tmp_path / 'g.db'}", space={"x": [0, 1, 2]}, strategy="grid", metric="loss",
                  direction="minimize")

    def loss(ctx):
        return {"loss": ctx.params["x"]}

    study.optimize(loss, n_trials=1)
    for trial in [study.optuna.ask(), study.optuna.ask()]:  # two workers take the other two points...
        study.requeue(study.optuna._storage.get_trial(trial._trial_id), "interrupted (Ctrl-C)")
        study.optuna.tell(trial, state=TrialState.FAIL)  # ...and are interrupted, as Optuna records it
    study.optimize(loss, n_trials=3)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert {t.params["x"] for t in study.trials if t.state == TrialState.COMPLETE} == {0, 1, 2}
    assert study.n_finished == 3


def test_a_study_refuses_changed_choices_before_any_trial_but_takes_wider_ranges(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = {"optim": ["adamw", "sgd"], "x": {"low": 0.0, "high": 1.0}}
    Study("s", storage, space=space, strategy="random", metric="loss", direction="minimize").optimize(
        lambda t: {"loss": t.params["x"]}, n_trials=2)
    wider = Study("s", storage, space={**space, "x": {"low": -1.0, "high": 2.0}}, strategy="random", metric="loss",
                  direction="minimize")
    wider.optimize(lambda t: {"loss": t.params["x"]}, n_trials=3)
    assert len(wider.trials) == 3
    for changed, said in ((["adamw", "rmsprop"], "the choices ['adamw', 'rmsprop']"),
                          ({"low": 0.0, "high": 1.0}, "a float range")):
        with pytest.raises(ConfigError, match=r"search\.space\.optim: study 's' already has trials sampled from "
                                              r"the choices \['adamw', 'sgd'\]") as e:
            Study("s", storage, space={**space, "optim": changed}, metric="loss", direction="minimize")
        assert said in str(e.value) and "new study_name" in str(e.value)
    assert len(load_study(storage, "s").trials) == 3  # nothing ran
