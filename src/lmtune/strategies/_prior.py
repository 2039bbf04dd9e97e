"""Prior-guided sampling from the user's baseline, robust to a bad baseline.

The baseline (trial 0) is what the user would have trained anyway, so it is usually a good place to search
around. Following PriorBand (Mallik et al., NeurIPS 2023) each proposal comes from one of three sources: the
prior (a Gaussian around the baseline in the space's unit cube), the incumbent's neighbourhood (the same around
the best trial so far), or the inner sampler (TPE, which covers the whole space). As in piBO (Hvarfner et al.,
ICLR 2022) the prior's share decays as trials accumulate, and, as PriorBand's dynamic weighting does, it decays
faster when the trials drawn near the baseline rank worse than the others: a bad baseline then costs a few
trials, not the search. The first proposals alternate with uniform draws (PriorBand keeps a uniform share): without
them the prior's and the incumbent's proposals fill the study's first trials, the prior is ranked only against its
own neighbourhood, and TPE starts from trials clustered around a bad baseline (B2 in BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from lmtune.records import PRIOR_SOURCE, maximizes
from lmtune.strategies._wrapping import WrappingSampler

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class PriorSampler(WrappingSampler):
    """Mixes proposals around `prior` (parameter values) and around the incumbent into `inner`'s.

    The chance of a prior proposal is ``p_prior * decay / (decay + n)`` after n finished trials, times the
    prior's standing: the share of finished prior proposals that rank in the better half of the study
    (Laplace-smoothed, so it starts at 1/2 and falls when the baseline's neighbourhood disappoints). The chance
    of an incumbent proposal is `p_incumbent` once `min_for_incumbent` trials have finished. Until there are
    `n_uniform` uniform draws, every other proposal is one.

    Example::

        sampler = PriorSampler(optuna.samplers.TPESampler(seed=0), prior={"learning_rate": 1e-3}, seed=0)
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, prior: Mapping[str, Any], seed: int | None = None,
                 p_prior: float = 0.8, decay: float = 10.0, p_incumbent: float = 0.2, width: float = 0.15,
                 min_for_incumbent: int = 5, n_uniform: int = 5):
        self.inner, self.prior = inner, dict(prior)
        self.p_prior, self.decay, self.p_incumbent, self.width = p_prior, decay, p_incumbent, width
        self.min_for_incumbent, self.n_uniform = min_for_incumbent, n_uniform
        self._rng = np.random.default_rng(seed)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.inner.infer_relative_search_space(study, trial)
        # Prior dimensions are proposed together even where the inner sampler would sample them one by one.
        return space or _common_space(study, self.prior)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        trials = study.get_trials(deepcopy=False)  # read once for both choices
        if search_space and self._uniform_due(trials):
            source, centre = "uniform", None
        else:
            source, centre = self._source(study, [t for t in trials if t.state in _FINISHED])
        if not search_space:
            source = "model"
        study._storage.set_trial_system_attr(trial._trial_id, PRIOR_SOURCE, source)
        if source == "uniform":
            return {name: _uniform(dist, self._rng) for name, dist in search_space.items()}
        if centre is None:
            return self.inner.sample_relative(study, trial, search_space)
        width = self.width if source == "prior" else self.width / 2
        return {name: _perturb(dist, centre[name], width, self._rng) if name in centre else
                _uniform(dist, self._rng) for name, dist in search_space.items()}

    def _source(self, study: optuna.Study, finished: list[FrozenTrial]) -> tuple[str, Mapping[str, Any] | None]:
        n = len(finished)
        u = self._rng.random()
        p_prior = self.p_prior * self.decay / (self.decay + n) * 2 * _standing(study, finished)
        if u < p_prior and self.prior:
            return "prior", self.prior
        complete = [t for t in finished if t.state == TrialState.COMPLETE]
        if u < p_prior + self.p_incumbent and len(finished) >= self.min_for_incumbent and complete:
            return "incumbent", study.best_trial.params
        return "model", None

    def _uniform_due(self, trials: list[FrozenTrial]) -> bool:
        """Uniform draws alternate with the guided ones until there are `n_uniform`: they are what the prior's
        standing is judged against, and what TPE starts from."""
        sources = [t.system_attrs.get(PRIOR_SOURCE) for t in trials]
        guided = sources.count("prior") + sources.count("incumbent")
        return sources.count("uniform") < min(self.n_uniform, guided)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self.inner.reseed_rng()


def _standing(study: optuna.Study, finished: list[FrozenTrial]) -> float:
    """Share (Laplace-smoothed) of finished prior proposals in the better half of the study, by final value or,
    for a pruned trial, by how far it got (a trial pruned early ranks in the worse half)."""
    scored = [(t, _score(t, study)) for t in finished]
    if not scored:
        return 0.5
    median = float(np.median([s for _, s in scored]))
    prior = [s for t, s in scored if t.system_attrs.get(PRIOR_SOURCE) == "prior"]
    good = sum(s >= median for s in prior)
    return (good + 1) / (len(prior) + 2)


def _score(trial: FrozenTrial, study: optuna.Study) -> float:
    """Higher is better: a complete trial's value (direction-aware) above any pruned one, pruned by steps run."""
    sign = 1.0 if maximizes(study) else -1.0
    if trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value):
        return 1e12 + sign * trial.value
    return float(trial.last_step or 0)


def _common_space(study: optuna.Study, prior: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """The distributions of the prior's parameters, from any earlier trial that sampled them."""
    out: dict[str, BaseDistribution] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            if name in prior and name not in out:
                out[name] = dist
    return out


def _perturb(dist: BaseDistribution, centre: Any, width: float, rng: np.random.Generator) -> Any:
    """A draw near `centre`: Gaussian of `width` in the unit interval (log scale for log dimensions); a
    categorical keeps the centre's choice with probability 1 - width * 2."""
    if isinstance(dist, CategoricalDistribution):
        if centre in dist.choices and rng.random() > 2 * width:
            return centre
        return dist.choices[int(rng.integers(len(dist.choices)))]
    if not isinstance(dist, FloatDistribution | IntDistribution):
        return centre
    lo, hi = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low, dist.high)
    c = math.log(centre) if dist.log else float(centre)
    if hi <= lo:
        return dist.low
    u = (c - lo) / (hi - lo) + rng.normal(0.0, width)
    u = abs(u) % 2.0  # reflect at the bounds, so the edges are not over-sampled
    u = 2.0 - u if u > 1.0 else u
    x = lo + u * (hi - lo)
    x = math.exp(x) if dist.log else x
    return _snap(dist, x)


def _uniform(dist: BaseDistribution, rng: np.random.Generator) -> Any:
    if isinstance(dist, CategoricalDistribution):  # the draw benchmarks were run with
        return dist.choices[int(rng.integers(len(dist.choices)))]
    return from_unit(dist, rng.random())


def from_unit(dist: BaseDistribution, u: float) -> Any:
    """The value at `u` in [0, 1) of the distribution's range (its log for a log dimension; a categorical's
    choices are equal slices)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    assert isinstance(dist, FloatDistribution | IntDistribution)
    lo, hi = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low, dist.high)
    x = lo + u * (hi - lo)
    return _snap(dist, math.exp(x) if dist.log else x)


def _snap(dist: FloatDistribution | IntDistribution, x: float) -> Any:
    step = dist.step
    if step is not None:
        x = dist.low + round((x - dist.low) / step) * step
    x = min(max(x, dist.low), dist.high)
    return int(round(x)) if isinstance(dist, IntDistribution) else float(x)
