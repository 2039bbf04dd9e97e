"""Startup trials from a Latin hypercube instead of independent uniform draws.

A model-based sampler starts from a few random trials, and a ladder rung may have no more than those. With 3 or 4
uniform draws of a log learning rate over 2.5 decades, whole decades often go untried (B5 on SmolLM2,
BENCHMARKS.md: a 4-trial rung drew 1.3e-4, 6.6e-4, 1.1e-2 and 1.6e-2 and never saw the good band between). A
Latin hypercube of n points (McKay, Beckman and Conover 1979) puts one point in each of n equal slices of every
dimension, at random within it and paired at random across dimensions, for any n. (The first 2^k points of a
scrambled Sobol sequence do the same for powers of two only: 3 of its 4 points leave a quarter empty, which
lost 2 of 8 SmolLM2 ladders.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial
from scipy.stats import qmc

from lmtune.strategies._prior import from_unit
from lmtune.strategies._wrapping import WrappingSampler


class StratifiedStart(WrappingSampler):
    """The first `n` sampled trials take the points of an n-point Latin hypercube over `names` (one dimension per
    parameter, in the unit interval of its distribution, log for log ones); later trials are `inner`'s.
    Enqueued trials (the baseline) do not use up a point.

    Example::

        sampler = StratifiedStart(optuna.samplers.TPESampler(n_startup_trials=4), ["learning_rate"], n=4, seed=0)
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, names: Sequence[str], n: int, seed: int | None = None):
        self.inner, self.names, self.n = inner, list(names), n
        self._points = qmc.LatinHypercube(d=max(1, len(self.names)), seed=seed).random(max(1, n))
        self._used_up_at: int | None = None  # a trial number from which on every point is taken

    def _point(self, study: optuna.Study, trial: FrozenTrial) -> Sequence[float] | None:
        """This trial's point: the k-th, k counting the earlier trials that were sampled, not enqueued. k only
        grows with the trial number, so once it reaches n no later trial needs the count."""
        if "fixed_params" in trial.system_attrs or (
                self._used_up_at is not None and trial.number >= self._used_up_at):
            return None
        k = sum(1 for t in study.get_trials(deepcopy=False)
                if t.number < trial.number and "fixed_params" not in t.system_attrs)
        if k >= self.n:
            self._used_up_at = trial.number
            return None
        return self._points[k]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self._point(study, trial) is not None:
            return {}  # each parameter then comes from sample_independent, at its coordinate of the point
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        point = self._point(study, trial)
        if point is None or param_name not in self.names:
            return self.inner.sample_independent(study, trial, param_name, param_distribution)
        return from_unit(param_distribution, float(point[self.names.index(param_name)]))
