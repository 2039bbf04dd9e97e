"""A sampler that learns from every trial: pruned trials count with their predicted final value.

Optuna's TPE ranks a pruned trial below every finished one (and, with Hyperband, sees one bracket at a time),
so most of what a multi-fidelity search measured is thrown away. This thin layer shows the inner sampler a
view of the study in which each pruned trial is a finished one whose value is the final value extrapolated
from its learning curve (`_curves.CurveModel`), as freeze-thaw BO (Swersky et al. 2014) and DPL (Kadra et al.,
NeurIPS 2023) let their surrogate model every partial curve. Storage is untouched: the view exists only while
the inner sampler proposes parameters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Container
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from lmtune.strategies._lc_pruner import CurveModels, metric_curve
from lmtune.strategies._wrapping import WrappingSampler


class _PredictedView:
    """The study as the inner sampler sees it: pruned trials with a curve become COMPLETE at their prediction."""

    def __init__(self, study: optuna.Study, swap: dict[int, FrozenTrial]):
        self._study, self._swap = study, swap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = [self._swap.get(t.number, t)
                  for t in self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache)]
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


class CurveSampler(WrappingSampler):
    """Wraps `inner` (GP or TPE in ``auto``, `ModelChoice`) so that it models pruned trials at their predicted
    final values.

    A `random_fraction` of the trials is drawn uniformly instead, as BOHB does (Falkner et al., ICML 2018, one
    third): a model fed on extrapolations can lock onto a region, and random trials are cheap once pruning
    stops the bad ones within a few evaluations.

    Example::

        sampler = CurveSampler(optuna.samplers.TPESampler(seed=0), random_fraction=0.2, seed=0)
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, max_resource: int | None = None,
                 random_fraction: float = 0.0, seed: int | None = None):
        self.inner = inner
        self.random_fraction = random_fraction
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._rng = np.random.default_rng(seed)
        self._uniform_trials: set[int] = set()
        self.models = CurveModels(None, max_resource)
        self._predicted: dict[int, FrozenTrial] = {}
        self._key: object = None

    def _view(self, study: optuna.Study) -> optuna.Study | _PredictedView:
        got = self.models.get(study)
        if got is None:
            return study
        model = got[0]
        if self.models.key != self._key:  # another trial finished: predict again with the new references
            self._predicted, self._key = {}, self.models.key
        for t in study._get_trials(deepcopy=False, states=(TrialState.PRUNED,), use_cache=True):
            if t.number in self._predicted:
                continue
            curve = metric_curve(t, None)
            prediction = model.predict(curve) if curve else None
            if prediction is None or not math.isfinite(prediction.mean):
                continue
            swapped = copy.copy(t)
            swapped.state = TrialState.COMPLETE
            swapped._values = [prediction.mean]
            self._predicted[t.number] = swapped
        return _PredictedView(study, self._predicted)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if trial.number in self._uniform_trials:
            return {}
        return self.inner.infer_relative_search_space(self._view(study), trial)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if trial.number in self._uniform_trials:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        return self.inner.sample_independent(self._view(study), trial, param_name,  # type: ignore[arg-type]
                                             param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.random_fraction > 0 and self._rng.random() < self.random_fraction:
            self._uniform_trials.add(trial.number)
        self.inner.before_trial(study, trial)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()
        self.inner.reseed_rng()
