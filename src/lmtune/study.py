"""The engine: a tuning study on Optuna storage, opened or resumed, running trials until a budget is spent.

`Study` is generic: it optimises any `objective(trial) -> float | dict` over a `SearchSpace`, which is how the
benchmarks plug in. `open_tuning_study` and `optimize_config` open and run one from an experiment config;
`lmtune.pipeline.tune` puts the fine-tuning objective, executors, proxy stages and selection around it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import interrupts, records
from lmtune.config import ExperimentConfig, ParamSpec, fingerprint_changes
from lmtune.errors import SETUP_ERRORS, ConfigError, DivergedError, OutOfMemoryError, TrainArgumentError
from lmtune.objectives import parse_condition
from lmtune.results import baseline_trial, best_trial, study_cost
from lmtune.space import SearchSpace
from lmtune.storage import mask_url, open_storage, strip_password, study_lock
from lmtune.strategies import create_pruner, create_sampler, resolve
from lmtune.strategies._warm_start import parse_sources
from lmtune.train.metrics import METRICS

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def counted(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials that count against n_trials: a trial failed because its worker died and then retried
    (Optuna's RetryHeartbeatStaleTrialCallback), or interrupted and queued again (`Study.requeue`), is replaced
    by its rerun, so neither a crash nor a Ctrl-C eats the budget; nor does a trial that failed on the study's
    own setup (its data, model or objective: `records.SETUP_FAILURE`), which stops the study and is queued too."""
    trials = list(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        replaced = {n for t in trials for n in [*optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t),
                                                *t.system_attrs.get(records.REQUEUED_FROM, [])]}
    return [t for t in trials if t.state in FINISHED and t.number not in replaced]


class BudgetSpent(Exception):
    """Every trial of the n_trials budget has finished, or the study was stopped; raised by `SharedStudy.ask` to
    end `optimize`."""


class SharedStudy(optuna.Study):
    """An Optuna study whose `ask` keeps an n_trials budget exact across every worker on the same storage.

    Optuna's MaxTrialsCallback stops a worker after its own trial, so N workers overshoot by up to N-1. Here a
    trial starts only while counted-finished plus running trials are below the budget, checked and started
    under `study_lock`. When the remaining trials all run elsewhere, the worker waits: they either finish
    (then it stops) or go stale (their worker died: it marks them failed, picks up their retry, and runs it).
    """

    budget: int | None = None
    poll_seconds = 1.0

    def stop(self) -> None:
        """Optuna's, callable from any thread: with n_jobs > 1 Ctrl-C's handler runs in the main thread, which
        only waits on the trial threads and which Optuna's `stop` refuses."""
        self._stop_flag = True

    def ask(self, fixed_distributions: dict[str, optuna.distributions.BaseDistribution] | None = None
            ) -> optuna.Trial:
        while True:
            if self._stop_flag and self._thread_local.in_optimize_loop:  # stopped (Ctrl-C, a budget) while this
                raise BudgetSpent  # thread (n_jobs > 1) waited: a trial started now would only be failed
            if self.budget is None:
                break
            with study_lock(self._storage, self.study_name):
                trials = self.get_trials(deepcopy=False)
                running = [t for t in trials if t.state == TrialState.RUNNING]
                if len(counted(trials)) + len(running) < self.budget:
                    interrupts.raise_if_pending()  # a trial started now would be interrupted at its first step
                    return super().ask(fixed_distributions)
            if not running:
                raise BudgetSpent
            with interrupts.interruptible():
                time.sleep(self.poll_seconds)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self)
        interrupts.raise_if_pending()
        return super().ask(fixed_distributions)


@dataclass
class TrialContext:
    """What an objective sees of its trial: the parameters and a way to report progress."""

    trial: optuna.Trial
    params: dict[str, Any]
    metric: str
    is_baseline: bool = False
    pruned: bool = False

    def __post_init__(self) -> None:
        # Optuna's pruners and `Trial.report` take one value per step; a multi-objective trial reports its curve only.
        self._prunable = len(self.trial.study.directions) == 1

    @property
    def number(self) -> int:
        return self.trial.number

    def report(self, step: int, metrics: Mapping[str, float] | float) -> bool:
        """Record an intermediate evaluation; True means the strategy wants this trial stopped.

        An objective told to stop simply returns what it has; the study then records the trial as pruned.
        The baseline trial is never pruned, so the baseline-vs-tuned comparison is always complete.
        """
        value = metrics if isinstance(metrics, int | float) else metrics[self.metric]
        if math.isfinite(value) and self._prunable:
            self.trial.report(float(value), step)
        if not isinstance(metrics, int | float):
            curve = list(self.trial.user_attrs.get(records.CURVE, []))
            curve.append({k: float(v) for k, v in metrics.items()})
            self.trial.set_user_attr(records.CURVE, curve)
        self.pruned = not self.is_baseline and self._prunable and self.trial.should_prune()
        return self.pruned

    def set(self, key: str, value: Any) -> None:
        self.trial.set_user_attr(key, value)


Objective = Callable[[TrialContext], "float | Mapping[str, float]"]
Callback = Callable[[optuna.Study, FrozenTrial], None]
Execute = Callable[[Objective, TrialContext], float]


def evaluate(objective: Objective, ctx: TrialContext) -> float:
    """Run the objective on one trial and record its metrics; raise TrialPruned if the strategy stopped it."""
    trial = ctx.trial
    try:
        out = objective(ctx)
    except DivergedError as e:
        # A NaN/inf loss says the configuration is bad, not that the trial broke: pruned, so samplers
        # learn from it like any other stopped trial and the failure list keeps only real failures.
        trial.set_user_attr(records.STOP_REASON, "diverged")
        trial.set_user_attr(records.PRUNE_REASON, mask_url(str(e))[:2000])
        raise optuna.TrialPruned(str(e)) from None
    except OutOfMemoryError as e:
        trial.set_user_attr(records.FAIL_REASON, mask_url(str(e))[:2000])  # "oom: ...", a reason code first
        raise
    except Exception as e:
        trial.set_user_attr(records.FAIL_REASON, mask_url(f"{type(e).__name__}: {e}")[:2000])
        if isinstance(e, SETUP_ERRORS) and not isinstance(e, TrainArgumentError):
            # The study's data, model or objective is broken, whatever the parameters: every later trial would
            # fail alike. The study stops and queues the trial again, uncounted (`Study._run_trial`).
            trial.set_user_attr(records.SETUP_FAILURE, True)
        raise
    metrics = {ctx.metric: float(out)} if isinstance(out, int | float) else {k: float(v) for k, v in out.items()}
    if ctx.metric not in metrics:
        trial.set_user_attr(records.SETUP_FAILURE, True)
        raise ConfigError(f"the objective returned {sorted(metrics)} without the study metric {ctx.metric!r}")
    trial.set_user_attr(records.METRICS, metrics)
    value = metrics[ctx.metric]
    if ctx.pruned:
        trial.set_user_attr(records.STOP_REASON, "pruned")
        raise optuna.TrialPruned()
    if not math.isfinite(value):
        trial.set_user_attr(records.FAIL_REASON, f"objective {ctx.metric} is {value}")
    return value


class Study:
    """A resumable study on a database, shared by any number of workers.

    Example::

        study = Study("demo", storage="sqlite:///demo.db", metric="loss", direction="minimize",
                      space={"x": {"low": -5.0, "high": 5.0}}, strategy="tpe")
        study.optimize(lambda t: {"loss": (t.params["x"] - 1) ** 2}, n_trials=20)
        print(study.best_trial.params)
    """

    def __init__(self, study_name: str = "lmtune", storage: str = "sqlite:///lmtune.db", *,
                 space: Mapping[str, ParamSpec | Mapping[str, Any] | Any] | SearchSpace | None = None,
                 strategy: str = "tpe", metric: str = "value", direction: str = "maximize", seed: int | None = 0,
                 n_startup_trials: int | None = None, baseline: Mapping[str, Any] | None = None,
                 pruner: str | None = None, min_resource: int | None = None, reduction_factor: int = 3,
                 max_resource: int | None = None, heartbeat_interval: int = 30, grace_period: int = 120,
                 worker: int = 0, prune_on: str | None = None, prune_direction: str | None = None,
                 warm_start: Sequence[str | Mapping[str, str]] = (), startup: str = "random",
                 sampled_trials: int | None = None,
                 objectives: Sequence[tuple[str, str]] | None = None, constraints: Sequence[str] = ()):
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # lmtune reports trials itself
        self.space = space if isinstance(space, SearchSpace) else SearchSpace(space or {})
        # Several objectives: [(metric, direction), ...], the first being `metric`; each trial's values are read
        # from its stored metrics and cost (`TrialRecord.measure`), so executors return the first value only.
        self.objectives = list(objectives) if objectives else [(metric, direction)]
        metric, direction = self.objectives[0]
        self.limits = [parse_condition(c) for c in constraints]
        self.metric, self.direction, self.strategy = metric, direction, strategy
        self.baseline = dict(baseline) if baseline is not None else None
        self.storage_url = storage
        sampler_name, self.pruner = resolve(strategy, pruner)
        pruner_obj = create_pruner(self.pruner, min_resource, reduction_factor, max_resource, prune_on,
                                   prune_direction)
        storage_obj = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage_obj)}
        resumed = existing[study_name].n_trials if study_name in existing else 0
        if seed is not None and sampler_name != "grid":  # a grid's seed orders the points all workers share
            # Worker k samples with seed + k, so workers do not propose the same parameters. The same seed would
            # replay the proposals already run (random search, TPE's startup trials): a resumed study seeds its
            # sampler with the seed and the number of trials it holds.
            seed += worker
            if resumed:
                seed = (seed * 1_000_003 + resumed) % 2**31
        sampler = create_sampler(sampler_name, self.space, seed, n_startup_trials, max_resource,
                                 prior=self.space.clip_to_space(self.baseline) if self.baseline else None,
                                 warm_start=parse_sources(warm_start), startup=startup,
                                 sampled_trials=sampled_trials)
        directions = [d for _, d in self.objectives]
        if study_name in existing:
            was = [d.name.lower() for d in existing[study_name].directions]
            if was != directions:
                raise ConfigError(f"study {study_name!r} in {mask_url(storage)} was created to {' and '.join(was)} "
                                  f"and this run asks to {' and '.join(directions)}; use another study_name or the "
                                  "same objective")
            self._check_space_continues(storage_obj, study_name)
        optuna.create_study(storage=storage_obj, study_name=study_name, directions=directions, load_if_exists=True)
        self.optuna = SharedStudy(study_name, storage_obj, sampler=sampler, pruner=pruner_obj)
        stored = records.StudyRecord(self.optuna)
        if self.optuna.user_attrs.get(records.STUDY_METRIC) is None:
            self.optuna.set_user_attr(records.STUDY_METRIC, metric)
            self.optuna.set_user_attr(records.STUDY_STRATEGY, strategy)
            if len(self.objectives) > 1:
                self.optuna.set_user_attr(records.OBJECTIVES, [{"name": n, "direction": d} for n, d in self.objectives])
        elif [n for n, _ in stored.objectives] != [n for n, _ in self.objectives]:
            raise ConfigError(f"study {study_name!r} optimises {_names(stored.objectives)}, this run asks for "
                              f"{_names(self.objectives)}; use another study_name or the same objective")

    @property
    def name(self) -> str:
        return self.optuna.study_name

    def _check_space_continues(self, storage: optuna.storages.BaseStorage, study_name: str) -> None:
        trials = storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False)
        clash = self.space.incompatible_with(trials)
        if clash is not None:
            name, stored, declared = clash
            raise ConfigError(
                f"search.space.{name}: study {study_name!r} already has trials sampled from {_describe(stored)}, "
                f"and this run declares {_describe(declared)}; Optuna cannot continue a study whose choices (or "
                f"kind of dimension) changed. Use a new study_name for the new space, or declare {name} as before")

    # ------------------------------------------------------------------------------------------------ running
    def optimize(self, objective: Objective, n_trials: int | None = None, timeout: float | None = None,
                 callbacks: Iterable[Callback] = (), budget_fte: float | None = None,
                 budget_device_hours: float | None = None, execute: Execute | None = None,
                 n_jobs: int = 1) -> Study:
        """Run trials until the first budget is reached: `n_trials` finished trials in the study, `budget_fte`
        full-training equivalents or `budget_device_hours` of trial time spent by the whole study (resumed
        runs count), or `timeout` seconds of this call.

        A trial that raises is recorded as failed with its reason, one whose loss diverges (`DivergedError`)
        as pruned with `stop_reason` "diverged", and the study goes on. Cost is read from
        each trial's ``cost`` attribute (``fte``, ``wall_seconds``), which a user objective may set too.
        `execute(objective, ctx)` runs the objective somewhere else (a child process, a Ray task); `n_jobs`
        trials run at once in threads of this process, each waiting on its own `execute`.
        """
        if n_trials is None and timeout is None and budget_fte is None and budget_device_hours is None:
            raise ConfigError("set a budget: search.n_trials, search.timeout or search.budget")
        if self._budget_spent(budget_fte, budget_device_hours):
            return self
        self.enqueue_baseline()
        if n_trials is not None and self.n_finished >= n_trials:
            return self
        sampler = self.optuna.sampler
        waiting = self.optuna.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.optuna) and not waiting:
            return self  # every grid point has run; another trial would only repeat one
        cbs = list(callbacks)
        if budget_fte is not None or budget_device_hours is not None:
            def stop_at_budget(study: optuna.Study, _trial: FrozenTrial) -> None:
                if self._budget_spent(budget_fte, budget_device_hours):
                    study.stop()

            cbs.append(stop_at_budget)
        self.optuna.budget = n_trials
        # Trials run in this thread: Ctrl-C stops a trial's run or a wait, never Optuna's bookkeeping around them
        # (`lmtune.interrupts`). With n_jobs > 1 this thread only waits on the others, and Ctrl-C comes at once.
        try:
            with interrupts.held() if n_jobs == 1 else contextlib.nullcontext():
                self.optuna.optimize(lambda t: self._run_trial(objective, t, execute), timeout=timeout,
                                     catch=(Exception,), callbacks=cbs, n_jobs=n_jobs)
        except BudgetSpent:
            pass
        finally:
            self.optuna.budget = None
        return self

    def _budget_spent(self, fte: float | None, device_hours: float | None) -> bool:
        cost = study_cost(self.trials)
        return (fte is not None and cost["fte"] >= fte) or (
            device_hours is not None and cost["wall_seconds"] / 3600 >= device_hours)

    def enqueue_baseline(self) -> None:
        """Queue the baseline as the study's first trial, once, even with many workers starting together."""
        if self.baseline is None:
            return
        with study_lock(self.optuna._storage, self.name):
            if any(records.TrialRecord(t).is_baseline for t in self.optuna.get_trials(deepcopy=False)):
                return
            self.optuna.enqueue_trial(self.space.clip_to_space(self.baseline), user_attrs={records.BASELINE: True})

    def _run_trial(self, objective: Objective, trial: optuna.Trial, execute: Execute | None) -> float:
        is_baseline = bool(trial.user_attrs.get(records.BASELINE))
        params = self.space.suggest(trial, baseline=self.baseline if is_baseline else None)
        params.update(trial.user_attrs.get(records.OVERRIDES) or {})  # set by whoever enqueued the trial
        ctx = TrialContext(trial, params, self.metric, is_baseline)
        try:
            try:
                with interrupts.interruptible():
                    value = (execute or evaluate)(objective, ctx)
            except optuna.TrialPruned:
                if self.limits:  # what it measured before it stopped informs samplers too
                    self._set_constraints(trial, self._stored(trial), pruned=True)
                raise
            if not self.limits and len(self.objectives) == 1:
                return value
            stored = self._stored(trial)  # read once, for the constraints and the other objectives
            self._set_constraints(trial, stored)
            return self._values(trial, value, stored)
        except KeyboardInterrupt:  # Optuna then marks it failed
            self.requeue_interrupted(trial)
            raise
        except Exception:
            frozen = self.optuna._storage.get_trial(trial._trial_id)
            if records.TrialRecord(frozen).setup_failure:  # wherever it ran, the next trial would fail alike
                self.optuna.stop()
                self.requeue(frozen, records.TrialRecord(frozen).fail_reason)  # to run once the setup is fixed
            raise

    def _set_constraints(self, trial: optuna.Trial, stored: records.TrialRecord, pruned: bool = False) -> None:
        """Record each objective.constraints limit as an Optuna constraint value (<= 0: it holds)."""
        for limit in self.limits:
            value = _measured(trial, stored, limit.metric, "" if pruned else f"objective.constraints "
                                                                               f"{limit.text!r}")
            if value is not None:
                trial.set_constraint(limit.text, limit.violation(value))

    def _values(self, trial: optuna.Trial, first: float, stored: records.TrialRecord
                ) -> float | tuple[float, ...]:
        """What Optuna is told: the objective value, or one value per objective."""
        if len(self.objectives) == 1:
            return first
        return (first, *(float(_measured(trial, stored, name, f"objective.metrics {name!r}"))  # type: ignore[arg-type]
                         for name, _ in self.objectives[1:]))

    def _stored(self, trial: optuna.Trial) -> records.TrialRecord:
        """What the trial stored, wherever it ran (an executor's process writes to the same storage)."""
        return records.TrialRecord(self.optuna._storage.get_trial(trial._trial_id))

    def requeue_interrupted(self, trial: optuna.Trial) -> str:
        """Queue a trial that Ctrl-C (or SIGINT) cut short to run again; the reason it records."""
        reason = "interrupted (Ctrl-C or SIGINT): queued to run again on the next run"
        self.requeue(self.optuna._storage.get_trial(trial._trial_id), reason)
        return reason

    def requeue(self, cut: FrozenTrial, reason: str) -> None:
        """Record why `cut` stopped short and queue its parameters (and what it was queued with: baseline,
        proxy transfer; its grid point) to run again; `counted` then counts the rerun, not `cut`."""
        self.optuna._storage.set_trial_user_attr(cut._trial_id, records.FAIL_REASON, reason)
        inputs = {k: v for k, v in cut.user_attrs.items() if k in records.QUEUED_INPUTS}
        # Kept apart from Optuna's retry_history, so that an interrupted trial's rerun still gets its one crash retry.
        previous = cut.system_attrs.get(records.REQUEUED_FROM, [])
        system = {**cut.system_attrs, records.REQUEUED_FROM: [*previous, cut.number]}
        self.optuna.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=cut.params, distributions=cut.distributions, user_attrs=inputs,
            system_attrs=system))

    # ------------------------------------------------------------------------------------------------ results
    @property
    def trials(self) -> list[FrozenTrial]:
        return self.optuna.get_trials(deepcopy=False)

    @property
    def n_finished(self) -> int:
        return len(counted(self.optuna.get_trials(deepcopy=False)))

    @property
    def best_trial(self) -> FrozenTrial:
        """The best feasible trial (several objectives: the Pareto point best on the first)."""
        best = best_trial(self.optuna)
        if best is None:
            raise ConfigError(f"study {self.name!r} has no feasible completed trial yet")
        return best

    @property
    def baseline_trial(self) -> FrozenTrial | None:
        return baseline_trial(self.trials)


def _measured(trial: optuna.Trial, stored: records.TrialRecord, name: str, needed_by: str) -> float | None:
    """A metric the trial measured; a study whose trials do not measure what `needed_by` needs is broken."""
    value = stored.measure(name)
    if value is None and needed_by:
        reason = (f"{needed_by} needs the metric {name!r}, which the trial did not measure; the objective must "
                  "return it (or the trainer record it) in the trial's metrics or cost")
        trial.set_user_attr(records.FAIL_REASON, f"ConfigError: {reason}")
        trial.set_user_attr(records.SETUP_FAILURE, True)
        raise ConfigError(reason)
    return value


def _names(objectives: Sequence[tuple[str, Any]]) -> str:
    """'loss', or ['acc', 'flops'] for several objectives."""
    names = [n for n, _ in objectives]
    return repr(names[0]) if len(names) == 1 else repr(names)


def _describe(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"the choices {list(dist.choices)}"
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    return f"a{' log-scale' if dist.log else ''} {kind} range"  # type: ignore[attr-defined]


def default_startup_trials(n_trials: int | None, multi_objective: bool = False) -> int:
    """Random trials before TPE/GP model the space: 5, chosen on LCBench (BENCHMARKS.md, B2 sweep: 5 beat 10
    by 1.4 points of regret at 10 FTE and tied at 30), capped at a third of a small budget; 3 with several
    objectives (B8: gp with 3 beat 5 at every budget on the development seeds)."""
    most = 3 if multi_objective else 5
    return most if n_trials is None else max(2, min(most, n_trials // 3))


def open_study(cfg: ExperimentConfig, worker: int = 0) -> Study:
    """The config's study, as worker `worker` of it opens it (see `Study`'s seed)."""
    sc, ex = cfg.search, cfg.executor
    return Study(
        cfg.study_name, cfg.storage, space=sc.space, strategy=sc.strategy, metric=cfg.objective.metric,
        direction=cfg.objective.direction or "maximize", seed=sc.seed, worker=worker,
        objectives=[(o.name, o.direction) for o in cfg.objective.objectives], constraints=cfg.objective.constraints,
        heartbeat_interval=ex.heartbeat_interval, grace_period=ex.grace_period,
        n_startup_trials=sc.n_startup_trials if sc.n_startup_trials is not None
        else default_startup_trials(sc.n_trials, cfg.objective.multi_objective),
        baseline=cfg.train.model_dump() if sc.baseline else None,
        pruner=sc.pruner, min_resource=sc.min_resource, reduction_factor=sc.reduction_factor,
        warm_start=[w if isinstance(w, str) else w.model_dump() for w in sc.warm_start],
        startup=sc.startup, sampled_trials=sc.n_trials - int(sc.baseline) if sc.n_trials else None,
        prune_on=sc.prune_on, prune_direction=None if sc.prune_on is None
        else "maximize" if METRICS[sc.prune_on].maximize else "minimize",
    )


def open_tuning_study(cfg: ExperimentConfig, worker: int = 0) -> Study:
    """The study of a config, with the config stored on first use (the report and `best` read it back).

    A study resumed with another model, data, objective or fixed training argument is refused (its old and new
    trials would be ranked together though they measured different things), unless
    `search.allow_changed_config`, which then records the new settings as the study's."""
    study = open_study(cfg, worker)
    stored, now = records.StudyRecord(study.optuna).fingerprint, cfg.fingerprint()
    if stored is not None and stored != now and not cfg.search.allow_changed_config:
        changes = fingerprint_changes(stored, now)
        raise ConfigError(
            f"study {cfg.study_name!r} was run with other settings, so its trials would not be comparable with "
            f"this run's: {'; '.join(changes[:5])}{' ...' if len(changes) > 5 else ''}. Use a new study_name, "
            "put the settings back, or pass --allow-changed-config (search.allow_changed_config) to go on anyway")
    if stored != now:
        study.optuna.set_user_attr(records.FINGERPRINT, now)
    if records.CONFIG not in study.optuna.user_attrs:
        stored = json.loads(cfg.model_dump_json())
        stored["storage"] = strip_password(cfg.storage)  # the study's readers need not learn the password
        study.optuna.set_user_attr(records.CONFIG, stored)
    return study


def optimize_config(cfg: ExperimentConfig, study: Study, objective: Objective, callbacks: Iterable[Callback] = (),
                    execute: Execute | None = None, n_jobs: int = 1) -> Study:
    """`Study.optimize` with the config's budgets."""
    sc = cfg.search
    return study.optimize(objective, n_trials=sc.n_trials, timeout=sc.timeout, callbacks=callbacks,
                          budget_fte=sc.budget.fte, budget_device_hours=sc.budget.device_hours,
                          execute=execute, n_jobs=n_jobs)
