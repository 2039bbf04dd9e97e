from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import optuna
from optuna.trial import TrialState

from lmtune.config import STRATIFIED_STRATEGIES, SamplerName, stratified_startup_fits
from lmtune.errors import ConfigError
from lmtune.space import SearchSpace
from lmtune.strategies._lc_sampler import CurveSampler
from lmtune.strategies._model_choice import GP_PAST_TRIALS, ModelChoice, gp_fits
from lmtune.strategies._prior import PriorSampler
from lmtune.strategies._stratified_start import StratifiedStart
from lmtune.strategies._warm_start import PastStudies, Source, WarmStartSampler

STRATEGIES: tuple[str, ...] = get_args(SamplerName)
_ABSENT = object()
AUTO_RANDOM_FRACTION = 0.0  # share of uniformly random trials in auto (B2, BENCHMARKS.md)
NSGA2_POPULATION = 5  # nsga2's generation size when n_startup_trials is 0
STRATIFIED_RANDOM_POINTS = 1024  # random search with startup lhs and no trial count: the design's size


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, aware of enqueued trials (the baseline).

    An enqueued trial whose values are a grid point visits that point: Optuna would leave the point unvisited
    and train it again. Every other trial takes an unvisited point (Optuna gives trial k point k while k is
    below the grid size, whatever the baseline took). A trial queued again after it was cut short keeps its
    point, and the study does not stop while such reruns wait. Optuna 5.0's `after_trial` looks up the
    finished trial's grid id when one grid point is left, and raises KeyError for an enqueued trial that holds
    no grid point; there is nothing to do for such a trial.
    """

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.system_attrs
        if "grid_id" in attrs:
            return
        if "fixed_params" in attrs:
            fixed = attrs["fixed_params"]
            point = tuple(fixed.get(name, _ABSENT) for name in self._param_names)
            if point in self._all_grids:
                self._visit(study, trial, self._all_grids.index(point))
            return
        unvisited = self._get_unvisited_grid_ids(study) or list(range(len(self._all_grids)))  # exhausted: repeat
        # By trial number, not by the seeded generator that every worker shares: workers asking at once (no
        # study lock without n_trials) then take different points.
        self._visit(study, trial, unvisited[trial.number % len(unvisited)])

    def _visit(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, grid_id: int) -> None:
        study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", grid_id)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        if "grid_id" not in trial.system_attrs:
            return
        # Optuna stops the study once no point is unvisited; queued reruns of cut-short points must still run.
        if not study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            super().after_trial(study, trial, state, values)


def create_sampler(strategy: str, space: SearchSpace, seed: int | None = 0,
                   n_startup_trials: int | None = None, max_resource: int | None = None,
                   prior: Mapping[str, Any] | None = None, warm_start: Sequence[Source] = (),
                   startup: str = "random", sampled_trials: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for `strategy`.

    - ``grid``: :class:`optuna.samplers.GridSampler` over every categorical choice, declared ``values`` and
      int/step ranges of the space; the study ends when the grid is exhausted.
    - ``random``: :class:`optuna.samplers.RandomSampler`.
    - ``tpe``: multivariate, grouped TPE (Bergstra et al. 2011; Falkner et al. 2018), which models
      conditional parameters per group instead of ignoring them.
    - ``gp``: :class:`optuna.samplers.GPSampler`, Gaussian-process Bayesian optimisation (best for small,
      continuous spaces and small budgets); with several objectives it maximises expected hypervolume improvement.
    - ``nsga2``: :class:`optuna.samplers.NSGAIISampler` (Deb et al. 2002), the evolutionary multi-objective
      search, with a generation of `n_startup_trials` trials. ``tpe`` with several objectives is MOTPE
      (Ozaki et al. 2020). Constraints (`trial.set_constraint`) inform tpe, gp and nsga2.
    - ``auto``: a model of the trials that sees pruned ones at their extrapolated final values (`CurveSampler`):
      the ``gp`` sampler while the study has under 100 finished trials and the space is numeric and unconditional,
      else the ``tpe`` one (`ModelChoice`). `max_resource` is the step where training
      ends (None: where most trials end). Given `prior` (the baseline's parameters), some proposals come from
      around it and around the incumbent (`PriorSampler`, PriorBand-style), fewer as trials accumulate or if the
      baseline's region disappoints.

    With `startup="lhs"` (``random``, ``tpe`` and ``gp``), the startup trials (every trial of ``random``) take
    the points of a Latin hypercube (`StratifiedStart`), so that a few of them span the space. `sampled_trials`
    (the study's trials that are not enqueued, if known) caps its size.

    With `warm_start` sources, ``tpe`` and ``auto`` also model the finished trials of those past studies
    (`WarmStartSampler`), which stay in their own studies; ``auto``'s GP sees 50 of them at most, spread over
    each source's ranking.

    Example::

        sampler = create_sampler("tpe", SearchSpace({"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}))
    """
    if strategy == "grid":
        grid = space.grid()
        if not grid:
            raise ConfigError("search.strategy is grid but search.space has no dimension to vary")
        return _GridSampler(grid, seed=seed)
    if warm_start and strategy not in ("tpe", "auto"):
        raise ConfigError(f"search.warm_start needs strategy tpe or auto, not {strategy!r}")
    startup_trials = 5 if n_startup_trials is None else n_startup_trials  # B2 LCBench sweep, BENCHMARKS.md
    if startup == "lhs":
        if not stratified_startup_fits(strategy, bool(warm_start)):
            raise ConfigError(f"search.startup lhs needs strategy {' or '.join(STRATIFIED_STRATEGIES)} without "
                              f"warm_start (here: {strategy!r}{', warm_start' if warm_start else ''}); "
                              "or use startup random")
        inner = create_sampler(strategy, space, seed, n_startup_trials, max_resource, prior)
        points = (sampled_trials or STRATIFIED_RANDOM_POINTS) if strategy == "random" else \
            min(startup_trials, sampled_trials or startup_trials)
        return StratifiedStart(inner, space.order, points, seed=seed)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup_trials, multivariate=True, group=True)
        past = PastStudies(warm_start) if warm_start else None
        if past is not None:
            tpe = WarmStartSampler(tpe, past)
        if strategy == "tpe":
            return tpe
        gp: optuna.samplers.BaseSampler = optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=startup_trials, warn_independent_sampling=False)
        if strategy == "auto":
            model = tpe
            if gp_fits(space):
                if past is not None:
                    gp = WarmStartSampler(gp, past, per_source=max(2, GP_PAST_TRIALS // len(warm_start)))
                model = ModelChoice(gp, tpe)
            curves = CurveSampler(model, max_resource=max_resource, random_fraction=AUTO_RANDOM_FRACTION, seed=seed)
            return PriorSampler(curves, prior, seed=seed) if prior else curves
        if strategy == "gp":
            return gp
        if strategy == "nsga2":
            # Optuna's default population (50) is 50 random trials: a small study would never evolve.
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup_trials or NSGA2_POPULATION))
    raise ConfigError(f"search.strategy: unknown strategy {strategy!r}; choose from {list(STRATEGIES)}")
