"""One trial: sampled params -> training config -> a real fine-tuning run -> metrics and cost in storage."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import torch
from pydantic import ValidationError

from lmtune.config import ExperimentConfig, TrainConfig, run_dir
from lmtune.errors import DivergedError, OutOfMemoryError
from lmtune.storage import study_lock
from lmtune.strategies import Member, PopulationBasedTraining, SegmentJob, SegmentResult
from lmtune.study import Callback, Study, TrialContext
from lmtune.train.model import check_model, load_tokenizer
from lmtune.train.trainer import MUTABLE_HPARAMS, PreparedData, Trainer, TrainResult


def trial_train_config(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The baseline training arguments with the trial's parameters applied, validated together."""
    try:
        return TrainConfig.model_validate({**base.model_dump(), **params})
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"invalid combination of parameters {params}: {'.'.join(map(str, err['loc']))}: "
                         f"{err['msg']}") from None


def cost_of(result: TrainResult) -> dict[str, float]:
    """Cost in optimizer steps, tokens, seconds and full-training equivalents (share of its full-length run)."""
    return {"steps": result.steps, "planned_steps": result.planned_steps, "tokens": result.tokens,
            "flops": result.flops, "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
            "fte": result.steps / max(result.planned_steps, 1)}


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
            check_model(self.cfg.model)
            self._tokenizer = load_tokenizer(self.cfg.model)
            self._prepared = PreparedData.build(self.cfg.data, self._tokenizer)
        return self._tokenizer, self._prepared

    def __call__(self, ctx: TrialContext) -> dict[str, float]:
        cfg = self.cfg
        train_cfg = trial_train_config(cfg.train, ctx.params)
        tokenizer, prepared = self.prepare()

        def make_trainer(attempt: TrainConfig) -> Trainer:
            ctx.set("hparams", json.loads(attempt.model_dump_json()))
            # Each attempt trains from scratch, and a trial retried after its worker died starts with the dead
            # run's attributes: the curve is this attempt's alone.
            ctx.set("curve", [])
            return Trainer(cfg.model, cfg.data, attempt, objective_metric=cfg.objective.metric,
                           maximize=cfg.objective.direction == "maximize", prepared=prepared,
                           tokenizer=tokenizer, report=ctx.report, progress=self.progress)

        try:
            trainer = train_fitting_memory(train_cfg, cfg.search.oom_retries, make_trainer,
                                           on_oom=lambda attempts: ctx.set("oom_attempts", attempts))
        except (DivergedError, OutOfMemoryError) as e:
            ctx.set("cost", cost_of(e.result))
            raise
        result = trainer.result
        ctx.set("cost", cost_of(result))
        if result.stop_reason:
            ctx.set("stop_reason", result.stop_reason)
        if train_cfg.output_dir:
            trainer.save(train_cfg.output_dir, result)
        value = result.metrics[cfg.objective.metric]
        if not ctx.pruned and _beats_study_best(ctx.trial.study, value, cfg.objective.metric):
            keep_best_model(ctx.trial.study, trainer, result, ctx.number, run_dir(cfg) / "best-model",
                            cfg.objective.metric)
        return {k: v for k, v in result.metrics.items() if k != "step"}


def train_fitting_memory(train_cfg: TrainConfig, retries: int, make_trainer: Callable[[TrainConfig], Trainer],
                         on_oom: Callable[[list[dict[str, Any]]], None] = lambda _: None) -> Trainer:
    """Set up and train a trainer; when it runs out of memory, train again from scratch with half the
    micro-batch and twice the accumulation, up to `retries` times, then raise OutOfMemoryError ("oom: ...").
    `on_oom` sees the failed attempts so far. Any other error, a diverged loss included, goes up at once."""
    attempts: list[dict[str, Any]] = []
    spent = TrainResult(metrics={})  # what the attempts that ran out of memory trained
    while True:
        trainer = make_trainer(train_cfg)
        started = time.perf_counter()
        try:
            trainer.setup().train()
            return trainer
        except DivergedError as e:
            e.result = trainer.result
            raise
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            error = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        spent.wall_seconds += time.perf_counter() - started  # device time, counted by budget.device_hours
        done = getattr(trainer, "result", None)  # None: out of memory before the first step (loading)
        if done is not None:
            spent.planned_steps = done.planned_steps
            for key in ("steps", "tokens", "flops", "train_seconds"):
                setattr(spent, key, getattr(spent, key) + getattr(done, key))
        del trainer, done
        free_memory()
        attempts.append({"per_device_train_batch_size": train_cfg.per_device_train_batch_size,
                         "gradient_accumulation_steps": train_cfg.gradient_accumulation_steps, "error": error})
        on_oom(attempts)
        if len(attempts) > retries or train_cfg.per_device_train_batch_size == 1:
            err = OutOfMemoryError(
                f"oom: out of memory at per_device_train_batch_size={train_cfg.per_device_train_batch_size} "
                f"after {len(attempts) - 1} retries with half the micro-batch ({error}); lower "
                "per_device_train_batch_size or data.max_length, or raise search.oom_retries")
            err.result = spent
            raise err
        train_cfg = halve_micro_batch(train_cfg)


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, the "out of memory" RuntimeErrors of other backends, and CPU allocator
    failures ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(e, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def halve_micro_batch(cfg: TrainConfig) -> TrainConfig:
    """Half the micro-batch, twice the accumulation: the same effective batch (exactly so for an even
    micro-batch), so the retry tunes the same hyperparameters in less memory. The evaluation batch is halved
    too: an evaluation can be what ran out of memory."""
    return cfg.model_copy(update={"per_device_train_batch_size": cfg.per_device_train_batch_size // 2,
                                  "gradient_accumulation_steps": cfg.gradient_accumulation_steps * 2,
                                  "per_device_eval_batch_size": max(1, cfg.per_device_eval_batch_size // 2)})


def free_memory() -> None:
    """Return the failed attempt's tensors before the retry allocates its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _beats_study_best(study: optuna.Study, value: float, metric: str) -> bool:
    """Better than every completed trial and than the kept model, whose trial may be another worker's that
    has saved it but is not marked complete yet."""
    if not math.isfinite(value):
        return False
    rivals = [float(v) for v in [(study.user_attrs.get("best_model") or {}).get("metrics", {}).get(metric)]
              if v is not None]
    with contextlib.suppress(ValueError):  # no completed trial yet
        rivals.append(study.best_value)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return all(value > r if maximize else value < r for r in rivals)


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
        study.set_user_attr("best_model", {"trial": trial_number, "dir": str(path.resolve()),
                                           "metrics": {k: v for k, v in result.metrics.items() if k != "step"}})
        if study.user_attrs.get("selection"):  # its winner's model is gone and a better trial is not in it
            study.set_user_attr("selection", None)


def run_segment(cfg: ExperimentConfig, job: SegmentJob, tokenizer: Any, prepared: PreparedData,
                progress: Callable[[int, int, float], None] | None = None) -> SegmentResult:
    """One PBT segment as a real training run: resume the member's checkpoint, apply its (possibly explored)
    hyperparameters, train to `job.until_step`, save the new checkpoint."""
    start_cfg = trial_train_config(cfg.train, job.checkpoint_params or job.params)
    trainer = Trainer(cfg.model, cfg.data, start_cfg, objective_metric=cfg.objective.metric,
                      maximize=cfg.objective.direction == "maximize", prepared=prepared, tokenizer=tokenizer,
                      progress=progress).setup()
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
    return SegmentResult(metrics={k: v for k, v in result.metrics.items() if k != "step"},
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

    from lmtune.study import quiet_libraries

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
    ran = [t for t in study.trials if "pbt_member" in t.user_attrs]
    cut_short = [t for t in ran if t.state == optuna.trial.TrialState.RUNNING]
    if ran and not cut_short:
        return []  # this study's population has run
    for t in cut_short:
        study.optuna._storage.set_trial_user_attr(
            t._trial_id, "fail_reason", "interrupted: the run stopped before this PBT member finished; the next "
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
        members = pbt.run(study.optuna, runner, workdir, cfg.objective.metric,
                          maximize=cfg.objective.direction == "maximize")
    finally:
        runner.close()
    finished = [m for m in members if m.score is not None and math.isfinite(m.score)]
    if finished:
        sign = 1 if cfg.objective.direction == "maximize" else -1
        best = max(finished, key=lambda m: sign * m.score)  # type: ignore[operator]
        info: dict[str, Any] = {"best_member": best.id, "best_trial": best.trial.number}
        kept = (study.optuna.user_attrs.get("best_model") or {}).get("metrics", {}).get(cfg.objective.metric)
        if kept is None or sign * best.score >= sign * kept:  # else the baseline's model stays the best
            out = export_member(cfg, best, run_dir(cfg) / "best-model", objective)
            info["best_model_dir"] = str(out.resolve())
            study.optuna.set_user_attr("best_model", {"trial": best.trial.number, "dir": info["best_model_dir"],
                                                      "metrics": best.metrics})
        study.optuna.set_user_attr("pbt", info)
    for m in members:
        shutil.rmtree(workdir / f"member-{m.id}", ignore_errors=True)
    with contextlib.suppress(OSError):  # the checkpoint folder, unless it holds something of the user's
        workdir.rmdir()
    return members


def export_member(cfg: ExperimentConfig, member: Member, out: Path, objective: FineTuneObjective) -> Path:
    """The member's final model (or adapter) and tokenizer via save_pretrained, with its schedule beside."""
    tokenizer, prepared = objective.prepare()
    trainer = Trainer(cfg.model, cfg.data, trial_train_config(cfg.train, member.checkpoint_params),
                      prepared=prepared, tokenizer=tokenizer).setup()
    assert member.checkpoint is not None
    trainer.load_state(member.checkpoint)
    shutil.rmtree(out, ignore_errors=True)  # the baseline's model (a full model beside an adapter) goes
    trainer.save(out, TrainResult(metrics=member.metrics, steps=member.step, planned_steps=trainer.total_steps))
    (out / "pbt_schedule.json").write_text(json.dumps({"schedule": member.schedule, "lineage": member.lineage},
                                                      indent=2, default=str))
    return out
