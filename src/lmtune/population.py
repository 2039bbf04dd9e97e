"""Population-based training with real fine-tuning runs: each member's segments train, checkpoint and resume.

`strategies.PopulationBasedTraining` decides who exploits whom and how hyperparameters explore; this module
gives it segments that really train (`run_segment`), in this process or in local worker processes
(`SegmentRunner`), runs a study's population (`run_pbt`) and keeps the best member's model (`export_member`).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import optuna

from lmtune import records
from lmtune.config import ExperimentConfig, run_dir
from lmtune.errors import DivergedError
from lmtune.quiet import quiet_libraries
from lmtune.strategies import Member, PopulationBasedTraining, SegmentJob, SegmentResult
from lmtune.study import Callback, Study
from lmtune.train.trainer import MUTABLE_HPARAMS, PreparedData, Trainer, TrainResult
from lmtune.trial import FineTuneObjective


def run_segment(cfg: ExperimentConfig, job: SegmentJob, tokenizer: Any, prepared: PreparedData,
                progress: Callable[[int, int, float], None] | None = None) -> SegmentResult:
    """One PBT segment as a real training run: resume the member's checkpoint, apply its (possibly explored)
    hyperparameters, train to `job.until_step`, save the new checkpoint."""
    start_cfg = cfg.train.with_params(job.checkpoint_params or job.params)
    trainer = Trainer.from_config(cfg, start_cfg, prepared=(tokenizer, prepared), progress=progress).setup()
    before = None
    if job.checkpoint_in is not None:
        trainer.load_state(job.checkpoint_in)
        if job.evaluate_first:
            before = trainer.evaluate()
        trainer.set_hparams({k: v for k, v in job.params.items()
                             if k in MUTABLE_HPARAMS and v != getattr(start_cfg, k)})
    first_step = trainer.step
    try:
        result = trainer.train(until_step=job.until_step)
    except DivergedError as e:
        r = trainer.result
        return SegmentResult(metrics={}, steps=trainer.step - first_step, planned_steps=trainer.total_steps,
                             tokens=r.tokens, train_seconds=r.train_seconds, wall_seconds=r.wall_seconds,
                             diverged=str(e))
    trainer.save_state(job.checkpoint_out)
    return SegmentResult(metrics=result.final_metrics,
                         steps=trainer.step - first_step, planned_steps=trainer.total_steps, tokens=result.tokens,
                         train_seconds=result.train_seconds, wall_seconds=result.wall_seconds,
                         metrics_before=before)


class SegmentRunner:
    """Runs a generation of PBT segments in this process, or spread over local worker processes that each
    keep their tokenizer and encoded data across segments."""

    def __init__(self, objective: FineTuneObjective, workers: int = 1):
        self.objective, self.workers = objective, workers
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, jobs: list[SegmentJob]) -> list[SegmentResult]:
        if self.workers == 1:
            tokenizer, prepared = self.objective.prepare()
            return [run_segment(self.objective.cfg, job, tokenizer, prepared, self.objective.progress)
                    for job in jobs]
        if self._pool is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker,
                                             initargs=(self.objective.cfg.model_dump_json(), threads))
        return list(self._pool.map(_run_segment_in_worker, jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


_worker: dict[str, Any] = {}


def _init_worker(cfg_json: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    quiet_libraries()
    _worker["objective"] = FineTuneObjective(ExperimentConfig.model_validate_json(cfg_json))


def _run_segment_in_worker(job: SegmentJob) -> SegmentResult:
    objective: FineTuneObjective = _worker["objective"]
    tokenizer, prepared = objective.prepare()
    return run_segment(objective.cfg, job, tokenizer, prepared)


def run_pbt(cfg: ExperimentConfig, study: Study, objective: FineTuneObjective,
            callbacks: Iterable[Callback] = ()) -> list[Member]:
    """Population-based training on the study: the baseline runs first as an ordinary trial (seen by
    `callbacks`), then the population; the best member's model is saved with save_pretrained and every
    checkpoint is removed. A population cut short (Ctrl-C, a killed process) leaves members RUNNING: the next
    run marks them failed and trains a new population from scratch (members are not resumed mid-schedule)."""
    ran = [t for t in study.trials if records.TrialRecord(t).pbt_member is not None]
    cut_short = [t for t in ran if t.state == optuna.trial.TrialState.RUNNING]
    if ran and not cut_short:
        return []  # this study's population has run
    for t in cut_short:
        study.optuna._storage.set_trial_user_attr(
            t._trial_id, records.FAIL_REASON, "interrupted: the run stopped before this PBT member finished; the next "
            "run trained a new population")
        study.optuna._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    base = study.baseline_trial
    if base is not None and base.state == optuna.trial.TrialState.RUNNING:  # the run before stopped in it
        study.requeue(base, "interrupted: the run stopped during the baseline; queued to run again")
        study.optuna._storage.set_trial_state_values(base._trial_id, optuna.trial.TrialState.FAIL)
        base = study.baseline_trial
    if study.baseline is not None and (base is None or base.state == optuna.trial.TrialState.WAITING):
        # The baseline runs as the one trial before the population (members would otherwise take its slot).
        study.optimize(objective, n_trials=study.n_finished + 1, callbacks=callbacks)
    p = cfg.search.pbt
    workdir = Path(p.checkpoint_dir) if p.checkpoint_dir else run_dir(cfg) / "pbt"
    pbt = PopulationBasedTraining(study.space, MUTABLE_HPARAMS, p.population_size, p.segment_steps, p.quantile,
                                  p.resample_probability, p.perturb_factors, cfg.search.seed)
    runner = SegmentRunner(objective, p.workers)
    try:
        members = pbt.run(study.optuna, runner, workdir, cfg.objective.metric, maximize=cfg.objective.maximize)
    finally:
        runner.close()
    finished = [m for m in members if m.score is not None and math.isfinite(m.score)]
    if finished:
        sign = 1 if cfg.objective.maximize else -1
        best = max(finished, key=lambda m: sign * m.score)  # type: ignore[operator]
        info: dict[str, Any] = {"best_member": best.id, "best_trial": best.trial.number}
        kept = records.StudyRecord(study.optuna).best_model.get("metrics", {}).get(cfg.objective.metric)
        if kept is None or sign * best.score >= sign * kept:  # else the baseline's model stays the best
            out = export_member(cfg, best, run_dir(cfg) / "best-model", objective)
            info["best_model_dir"] = str(out.resolve())
            study.optuna.set_user_attr(records.BEST_MODEL, {"trial": best.trial.number, "dir": info["best_model_dir"],
                                                      "metrics": best.metrics})
        study.optuna.set_user_attr(records.PBT, info)
    for m in members:
        shutil.rmtree(workdir / f"member-{m.id}", ignore_errors=True)
    with contextlib.suppress(OSError):  # the checkpoint folder, unless it holds something of the user's
        workdir.rmdir()
    return members


def export_member(cfg: ExperimentConfig, member: Member, out: Path, objective: FineTuneObjective) -> Path:
    """The member's final model (or adapter) and tokenizer via save_pretrained, with its schedule beside."""
    trainer = Trainer.from_config(cfg, cfg.train.with_params(member.checkpoint_params),
                                  prepared=objective.prepare()).setup()
    assert member.checkpoint is not None
    trainer.load_state(member.checkpoint)
    shutil.rmtree(out, ignore_errors=True)  # the baseline's model (a full model beside an adapter) goes
    trainer.save(out, TrainResult(metrics=member.metrics, steps=member.step, planned_steps=trainer.total_steps))
    (out / "pbt_schedule.json").write_text(json.dumps({"schedule": member.schedule, "lineage": member.lineage},
                                                      indent=2, default=str))
    return out
