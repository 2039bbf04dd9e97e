"""MLflow and TensorBoard tracking of a real small study, read back through each tool's own reader."""

import sys

import pytest
from conftest import small_config
from optuna.trial import TrialState

from lmtune import tune
from lmtune.config import validate_config
from lmtune.errors import ConfigError


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """An ASHA study (a pruned trial included) with both trackers on, MLflow at a custom experiment name."""
    tmp = tmp_path_factory.mktemp("tracked")
    cfg = small_config(tmp, tracking={"mlflow": {"experiment_name": "exp-a"}, "tensorboard": None}, search={
        "strategy": "asha", "n_trials": 4, "seed": 1, "min_resource": 4, "reduction_factor": 2,
        "space": {"learning_rate": {"low": 1e-5, "high": 3e-2, "log": True},
                  "weight_decay": {"low": 0.0, "high": 0.1}}},
        train={"max_steps": 12, "eval_steps": 4, "eval_max_samples": 8})
    study = tune(cfg)
    assert {TrialState.COMPLETE, TrialState.PRUNED} <= {t.state for t in study.trials}
    return study, tmp / "runs" / "test"


def test_mlflow_has_one_run_per_trial_with_params_curves_and_final_metrics(tracked):
    from mlflow.tracking import MlflowClient

    study, run_dir = tracked
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")  # the default: a local database in the run dir
    exp = client.get_experiment_by_name("exp-a")
    runs = {int(r.data.tags["lmtune.trial"]): r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == [t.number for t in study.trials]
    for t in study.trials:
        run = runs[t.number]
        assert run.info.run_name == f"trial {t.number}"
        assert run.data.params == {k: str(v) for k, v in t.params.items()}
        assert run.data.tags["lmtune.state"] == ("pruned" if t.state == TrialState.PRUNED else "complete")
        assert run.info.status == ("KILLED" if t.state == TrialState.PRUNED else "FINISHED")
        history = client.get_metric_history(run.info.run_id, "eval_loss")
        curve = t.user_attrs["curve"]
        assert [(m.step, m.value) for m in history] == [(int(c["step"]), c["eval_loss"]) for c in curve]
        assert run.data.metrics["final/eval_loss"] == t.user_attrs["metrics"]["eval_loss"]
        assert run.data.metrics["cost/fte"] == t.user_attrs["cost"]["fte"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(client.get_metric_history(runs[complete[0].number].info.run_id, "exact_match")) == 3
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    assert len(client.get_metric_history(runs[pruned.number].info.run_id, "eval_loss")) == 1
    assert runs[0].data.tags["lmtune.baseline"] == "true"


def test_tensorboard_has_one_run_per_trial_with_step_scalars(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    study, run_dir = tracked
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == [f"trial-{t.number:04d}"
                                                                          for t in study.trials]
    for t in study.trials:
        events = EventAccumulator(str(run_dir / "tensorboard" / f"trial-{t.number:04d}"))
        events.Reload()
        curve = t.user_attrs["curve"]
        scalars = events.Scalars("exact_match")  # TensorBoard keeps float32
        assert [s.step for s in scalars] == [int(c["step"]) for c in curve]
        assert [s.value for s in scalars] == pytest.approx([c["exact_match"] for c in curve], rel=1e-6)
        final = events.Scalars("final/eval_loss")
        assert final[-1].value == pytest.approx(t.user_attrs["metrics"]["eval_loss"])
        assert final[-1].step == int(curve[-1]["step"])
        assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the HParams tab
    done = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    events = EventAccumulator(str(run_dir / "tensorboard" / f"trial-{done.number:04d}"))
    events.Reload()
    assert [s.step for s in events.Scalars("eval_loss")] == [4, 8, 12]


def test_tracker_missing_package_is_a_one_line_config_error(tmp_path, monkeypatch):
    for name in ("mlflow", "tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # as if the package were not installed
        with pytest.raises(ConfigError) as err:
            validate_config(small_config(tmp_path, tracking=name))
        msg = str(err.value)
        assert "\n" not in msg and f"tracking: {name} is switched on" in msg
        assert "pip install 'lmtune[tracking]'" in msg
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError, match="unknown tracker 'wandb'; choose from"):
        validate_config(small_config(tmp_path, tracking=["mlflow", "wandb"]))


def test_tracking_shorthands(tmp_path):
    cfg = validate_config(small_config(tmp_path, tracking="mlflow"))
    assert cfg.tracking.mlflow is not None and cfg.tracking.tensorboard is None
    cfg = validate_config(small_config(tmp_path, tracking=["mlflow", "tensorboard"]))
    assert cfg.tracking.mlflow is not None and cfg.tracking.tensorboard is not None
    cfg = validate_config(small_config(tmp_path, tracking={"tensorboard": {"log_dir": "tb"}, "mlflow": False}))
    assert cfg.tracking.mlflow is None and cfg.tracking.tensorboard.log_dir == "tb"
    assert validate_config(small_config(tmp_path)).tracking.mlflow is None  # off unless asked for


def test_a_chosen_tensorboard_dir_keeps_studies_apart(tmp_path):
    from lmtune.tracking import create_trackers

    for name in ("a", "b"):
        create_trackers(validate_config(small_config(tmp_path, study_name=name,
                                                     tracking={"tensorboard": {"log_dir": str(tmp_path / "tb")}})))
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["a", "b"]


def test_unreachable_mlflow_store_fails_before_any_trial(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = small_config(tmp_path, tracking={"mlflow": {"tracking_uri": f"sqlite:///{blocker}/sub/mlflow.db"}})
    with pytest.raises(ConfigError, match="tracking.mlflow"):
        tune(cfg)
    assert not (tmp_path / "study.db").exists()


def test_a_pbt_schedule_becomes_hparam_scalars_at_its_steps(tmp_path):
    """A member's schedule (as PBT stores it) is tracked as hparam/<name> at the steps where it changed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmtune import Study
    from lmtune.tracking import TensorBoardTracker

    study = Study("s", "memory://", space={"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                  strategy="random", metric="eval_loss", direction="minimize")

    def objective(ctx):
        lr = ctx.params["learning_rate"]
        ctx.set("schedule", [{"step": 0, "learning_rate": lr}, {"step": 8, "learning_rate": lr * 0.8}])
        for step in (4, 8, 12):
            ctx.report(step, {"eval_loss": 1.0 / step, "step": step})
        return {"eval_loss": 1.0 / 12}

    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    TensorBoardTracker(tmp_path).log(study.optuna, trial)
    events = EventAccumulator(str(tmp_path / "trial-0000"))
    events.Reload()
    lr = trial.params["learning_rate"]
    assert [(s.step, s.value) for s in events.Scalars("hparam/learning_rate")] == [
        (0, pytest.approx(lr, rel=1e-6)), (8, pytest.approx(lr * 0.8, rel=1e-6))]
    assert [s.step for s in events.Scalars("eval_loss")] == [4, 8, 12]
