"""One trial: sampled params -> training config -> a real fine-tuning run -> metrics and cost in storage."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from lmtune import records
from lmtune.config import ExperimentConfig, TrainConfig, run_dir
from lmtune.errors import DivergedError, OutOfMemoryError
from lmtune.storage import study_lock
from lmtune.study import TrialContext
from lmtune.train.oom import train_fitting_memory
from lmtune.train.trainer import PreparedData, Trainer, TrainResult, prepare


class FineTuneObjective:
    """Trains one configuration per call. Tokenizer and encoded data are built once per process."""

    def __init__(self, cfg: ExperimentConfig, progress: Callable[[int, int, float], None] | None = None):
        self.cfg = cfg
        self.progress = progress
        self._tokenizer: Any = None
        self._prepared: PreparedData | None = None

    def prepare(self) -> tuple[Any, PreparedData]:
        """Load the tokenizer, check the model config loads, and encode the data (once)."""
        if self._prepared is None:
            self._tokenizer, self._prepared = prepare(self.cfg)
        return self._tokenizer, self._prepared

    def __call__(self, ctx: TrialContext) -> dict[str, float]:
        cfg = self.cfg
        train_cfg = cfg.train.with_params(ctx.params)
        prepared = self.prepare()

        def make_trainer(attempt: TrainConfig) -> Trainer:
            ctx.set(records.HPARAMS, json.loads(attempt.model_dump_json()))
            # Each attempt trains from scratch, and a trial retried after its worker died starts with the dead
            # run's attributes: the curve is this attempt's alone.
            ctx.set(records.CURVE, [])
            return Trainer.from_config(cfg, attempt, prepared=prepared, report=ctx.report, progress=self.progress)

        try:
            trainer = train_fitting_memory(train_cfg, cfg.search.oom_retries, make_trainer,
                                           on_oom=lambda attempts: ctx.set(records.OOM_ATTEMPTS, attempts))
        except (DivergedError, OutOfMemoryError) as e:
            ctx.set(records.COST, e.result.cost())
            raise
        result = trainer.result
        ctx.set(records.COST, result.cost())
        if result.stop_reason:
            ctx.set(records.STOP_REASON, result.stop_reason)
        if train_cfg.output_dir:
            trainer.save(train_cfg.output_dir, result)
        value = result.metrics[cfg.objective.metric]
        # One model is kept: the best feasible one. A multi-objective study has no single best until a point is
        # picked (`lmtune best --pick`), so it keeps none; `lmtune train best.yaml` trains the picked point.
        measured = {**result.cost(), **result.final_metrics}
        feasible = all(c.holds(measured.get(c.metric)) for c in cfg.objective.limits)
        if not ctx.pruned and feasible and not cfg.objective.multi_objective and \
                _beats_study_best(ctx.trial.study, value, cfg.objective.metric):
            keep_best_model(ctx.trial.study, trainer, result, ctx.number, run_dir(cfg) / "best-model",
                            cfg.objective.metric)
        return result.final_metrics


def _beats_study_best(study: optuna.Study, value: float, metric: str) -> bool:
    """Better than every completed trial and than the kept model, whose trial may be another worker's that
    has saved it but is not marked complete yet."""
    if not math.isfinite(value):
        return False
    stored = records.StudyRecord(study)
    rivals = [float(v) for v in [stored.best_model.get("metrics", {}).get(metric)] if v is not None]
    with contextlib.suppress(ValueError):  # no completed trial yet
        rivals.append(study.best_value)
    return all(value > r if stored.maximize else value < r for r in rivals)


def keep_best_model(study: optuna.Study, trainer: Trainer, result: TrainResult, trial_number: int,
                    path: Path, metric: str) -> None:
    """Save this run's model over the previous best, so exactly one model (the best) stays on disk.

    The save (minutes for a large model) happens outside the study lock; under it, only the check that no
    other worker kept a better model meanwhile and the swap, so other workers' trials are not held up."""
    tmp = path.with_name(f"{path.name}.tmp-{trial_number}")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save(tmp, result)
    with study_lock(study._storage, study.study_name):  # workers finishing at once swap one by one
        if not _beats_study_best(study, result.metrics[metric], metric):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        study.set_user_attr(records.BEST_MODEL, {"trial": trial_number, "dir": str(path.resolve()),
                                                 "metrics": result.final_metrics})
        if records.StudyRecord(study).selection:  # its winner's model is gone and a better trial is not in it
            study.set_user_attr(records.SELECTION, None)
