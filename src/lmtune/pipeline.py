"""The tuning pipeline, top of the house: config -> (proxy stage) -> search -> (selection), as `lmtune run` runs it.

Everything it calls stands below it: the study engine (`study`), the fine-tuning objective (`trial`), where trials
run (`executors`), population-based training (`population`), proxy stages (`proxy`) and the selection phase
(`select`). Only the CLI and the package's public API import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from lmtune import proxy
from lmtune.config import ExperimentConfig, validate_config
from lmtune.executors.local import run_workers
from lmtune.executors.ray import run_on_ray
from lmtune.population import run_pbt
from lmtune.quiet import quiet_libraries
from lmtune.select import run_selection, selection_is_current
from lmtune.study import Callback, Objective, Study, open_tuning_study, optimize_config
from lmtune.tracking import create_trackers
from lmtune.trial import FineTuneObjective

TrialProgress = Callable[[int, int, float], None]


def tune(config: ExperimentConfig | dict[str, Any], callbacks: Iterable[Callback] = (),
         trial_progress: TrialProgress | None = None) -> Study:
    """Run (or resume) the tuning study an experiment config describes and return it."""
    cfg = validate_config(config)
    callbacks = list(callbacks)
    cfg.search.check_tunable()
    quiet_libraries()
    objective = FineTuneObjective(cfg, progress=trial_progress)
    objective.prepare()  # a bad dataset or model path fails here, before the study is touched
    if cfg.stages is not None:
        study = run_stages(cfg, objective, callbacks, trial_progress)
    else:
        study = search(cfg, objective, callbacks)
    if cfg.select is not None and not selection_is_current(cfg, study.optuna):
        run_selection(cfg, study.optuna, objective.prepare(), trial_progress)
    return study


def search(cfg: ExperimentConfig, objective: FineTuneObjective, callbacks: Iterable[Callback] = ()) -> Study:
    """The search stage: the config's strategy and budget over its space, with a fine-tuning objective."""
    objective.prepare()
    callbacks = [*callbacks, *create_trackers(cfg)]
    study = open_tuning_study(cfg)
    if cfg.search.strategy == "pbt":
        for member in run_pbt(cfg, study, objective, callbacks):
            frozen = study.optuna.get_trials(deepcopy=False)[member.trial.number]
            for callback in callbacks:
                callback(study.optuna, frozen)
    else:
        run_trials(cfg, study, objective, callbacks)
    return study


def run_stages(cfg: ExperimentConfig, objective: FineTuneObjective, callbacks: Iterable[Callback] = (),
               trial_progress: TrialProgress | None = None) -> Study:
    """Proxy tuning: stage 1 searches the proxy, or each rung of a ladder in turn (each its own study, tracked
    under its own name; a finished rung is not run again on resume), stage 2 runs the baseline, the transferred
    top-k and the optional local search on the target. Returns the target study."""
    callbacks = list(callbacks)
    done: proxy.Done = []
    for rung in proxy.plan_rungs(cfg):
        rung = proxy.narrow_rung(cfg, rung, done)
        done.append((rung, search(rung.cfg, FineTuneObjective(rung.cfg, progress=trial_progress), callbacks)))
    stage2 = proxy.plan_target(cfg, done)
    run_trials(stage2.cfg, stage2.study, objective, [*callbacks, *create_trackers(cfg)])
    proxy.record_stages(done, stage2)
    return stage2.study


def run_trials(cfg: ExperimentConfig, study: Study, objective: Objective, callbacks: Iterable[Callback] = ()) -> None:
    """The study's trials, up to the config's budgets, where its executor runs them: here, in local worker
    processes or as Ray tasks."""
    if cfg.executor.type == "ray":
        run_on_ray(cfg, study, objective, callbacks)
    elif cfg.executor.workers is not None:
        study.enqueue_baseline()
        run_workers(cfg, study, callbacks)
    else:
        optimize_config(cfg, study, objective, callbacks)
