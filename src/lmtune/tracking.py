"""Send every finished trial to MLflow and/or TensorBoard, for users who already look at their runs there.

A tracker is an Optuna-style callback ``(study, frozen_trial)``: it reads what the study stored for the trial
(params, the step-indexed ``curve``, final ``metrics``, ``cost``, state, PBT ``schedule``), so the trainer and
the trial runner know nothing of it and every strategy (PBT included) feeds it the same way. One MLflow run and
one TensorBoard run per trial; metric names are the same in both:

- each evaluation's metrics under their own names (``eval_loss``, ``exact_match``, ...) at their optimizer step;
- ``final/<metric>`` and ``cost/<fte|steps|tokens|wall_seconds|...>`` at the trial's last step;
- ``hparam/<name>`` at each step where a PBT member's schedule changed it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune.config import ExperimentConfig, run_dir
from lmtune.errors import ConfigError
from lmtune.records import StudyRecord, TrialRecord
from lmtune.results import trial_curve, trial_status

Tracker = Callable[[optuna.Study, FrozenTrial], None]


def create_trackers(cfg: ExperimentConfig) -> list[Tracker]:
    """The trackers `cfg.tracking` switches on, connected now so a bad URI fails before any trial runs."""
    trackers: list[Tracker] = []
    if cfg.tracking.mlflow is not None:
        m = cfg.tracking.mlflow
        uri = m.tracking_uri or f"sqlite:///{(run_dir(cfg) / 'mlflow.db').resolve()}"
        trackers.append(_guarded("MLflow", MlflowTracker(uri, m.experiment_name or cfg.study_name).log))
    if cfg.tracking.tensorboard is not None:
        chosen = cfg.tracking.tensorboard.log_dir  # a directory the user chose may collect several studies
        log_dir = Path(chosen) / cfg.study_name if chosen else run_dir(cfg) / "tensorboard"
        trackers.append(_guarded("TensorBoard", TensorBoardTracker(log_dir).log))
    return trackers


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def trial_points(study: optuna.Study, t: FrozenTrial) -> Iterator[tuple[str, float, int]]:
    """Every scalar a tracker records for a trial, as (name, value, step)."""
    curve = trial_curve(t, StudyRecord(study).metric)
    for step, metrics in curve:
        for k, v in _numbers(metrics).items():
            yield k, v, step
    last = curve[-1][0] if curve else int(TrialRecord(t).cost.get("steps", 0))
    for k, v in _numbers(TrialRecord(t).metrics).items():
        yield f"final/{k}", v, last
    for k, v in _numbers(TrialRecord(t).cost).items():
        yield f"cost/{k}", v, last
    for change in TrialRecord(t).schedule:
        for k, v in _numbers({k: v for k, v in change.items() if k != "step"}).items():
            yield f"hparam/{k}", v, int(change.get("step", 0))


def _tags(study: optuna.Study, t: FrozenTrial) -> dict[str, str]:
    tags = {"lmtune.study": study.study_name, "lmtune.trial": str(t.number), "lmtune.state": trial_status(t),
            "lmtune.baseline": str(TrialRecord(t).is_baseline).lower()}
    if TrialRecord(t).pbt_member is not None:
        tags["lmtune.pbt_member"] = str(TrialRecord(t).pbt_member)
    reason = TrialRecord(t).fail_reason or TrialRecord(t).stop_reason
    if reason:
        tags["lmtune.reason"] = str(reason)[:5000]
    return tags


def _ms(t: FrozenTrial, attr: str) -> int | None:
    when = getattr(t, attr)
    return int(when.timestamp() * 1000) if when is not None else None


def _guarded(name: str, log: Tracker) -> Tracker:
    """A tracker that fails warns and lets the study go on: a lost plot must not cost the study."""

    def track(study: optuna.Study, t: FrozenTrial) -> None:
        try:
            log(study, t)
        except Exception as e:
            warnings.warn(f"{name} could not record trial {t.number}: {type(e).__name__}: {e}", stacklevel=2)

    return track


class MlflowTracker:
    """One MLflow run per trial in experiment `experiment_name`, through `MlflowClient` (no global active run)."""

    _STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}

    def __init__(self, tracking_uri: str, experiment_name: str):
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would break the live display

        try:
            if tracking_uri.startswith("sqlite:///"):
                Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment_name)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment_name)
        except Exception as e:
            raise ConfigError(f"tracking.mlflow: cannot open experiment {experiment_name!r} at {tracking_uri}: "
                              f"{type(e).__name__}: {str(e)[:500]}; fix tracking.mlflow.tracking_uri") from None
        self.tracking_uri = tracking_uri

    def log(self, study: optuna.Study, t: FrozenTrial) -> None:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, start_time=_ms(t, "datetime_start"),
                                     run_name=f"trial {t.number}", tags=_tags(study, t))
        run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in t.params.items()]
        stamp = _ms(t, "datetime_complete") or _ms(t, "datetime_start") or 0
        metrics = [Metric(k, v, stamp, step) for k, v, step in trial_points(study, t)]
        for i in range(0, len(params), 100):  # MLflow's batch limits
            self.client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        self.client.set_terminated(run_id, self._STATUS.get(t.state, "FINISHED"), end_time=_ms(t, "datetime_complete"))


class TensorBoardTracker:
    """One TensorBoard run per trial, `<log_dir>/trial-NNNN`, with its params in the HParams tab."""


    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def log(self, study: optuna.Study, t: FrozenTrial) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        with SummaryWriter(log_dir=str(self.log_dir / f"trial-{t.number:04d}")) as w:
            points = list(trial_points(study, t))
            for k, v, step in points:
                w.add_scalar(k, v, step)
            hp = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in t.params.items()}
            hp["state"] = trial_status(t)
            finals = {k: v for k, v, _ in points if k.startswith("final/")}
            for summary in hparams(hp, finals):
                w.file_writer.add_summary(summary)
            w.add_text("trial", "  \n".join(f"{k}: {v}" for k, v in _tags(study, t).items()))
