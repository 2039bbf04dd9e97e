"""Startup trials from a scrambled Sobol sequence instead of independent uniform draws.

A model-based sampler starts from a few random trials, and a ladder rung may have no more than those. With 3 or 4
uniform draws of a log learning rate over 2.5 decades, whole decades often go untried (B5 on SmolLM2,
BENCHMARKS.md: a 4-trial rung drew 1.3e-4, 6.6e-4, 1.1e-2 and 1.6e-2 and never saw the good band between). The
first 2^k points of a scrambled Sobol sequence put one point in each of 2^k equal slices of every dimension
(Owen 1998; Joe and Kuo 2008), still at random within them, so a handful of trials spans the space.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial
from scipy.stats import qmc

from lmtune.strategies._prior import from_unit
from lmtune.strategies._wrapping import WrappingSampler


class SobolStart(WrappingSampler):
    """The first `n` sampled trials take their values from a scrambled Sobol sequence over `names` (one dimension
    per parameter, in the unit interval of its distribution, log for log ones); later trials are `inner`'s.
    Enqueued trials (the baseline) do not use up a point, so the points stay balanced.

    Example::

        sampler = SobolStart(optuna.samplers.TPESampler(n_startup_trials=4), ["learning_rate"], n=4, seed=0)
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, names: Sequence[str], n: int, seed: int | None = None):
        self.inner, self.names, self.n = inner, list(names), n
        with warnings.catch_warnings():  # scipy warns when the dimension count exceeds what it balances best
            warnings.simplefilter("ignore")
            sobol = qmc.Sobol(d=max(1, len(self.names)), scramble=True, seed=seed)
            self._points = sobol.random_base2(max(0, math.ceil(math.log2(max(n, 1)))))

    def _point(self, study: optuna.Study, trial: FrozenTrial) -> Sequence[float] | None:
        """This trial's Sobol point: the k-th, k counting the earlier trials that were sampled, not enqueued."""
        if "fixed_params" in trial.system_attrs:
            return None
        k = sum(1 for t in study.get_trials(deepcopy=False)
                if t.number < trial.number and "fixed_params" not in t.system_attrs)
        return self._points[k] if k < self.n else None

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
