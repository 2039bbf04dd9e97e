"""The model inside ``auto``: a Gaussian process while the study is small, TPE once it is large.

On B2 (LCBench, BENCHMARKS.md) Optuna's GP inside `CurveSampler` reached a lower regret than TPE at 10 and 30 FTE,
where a study holds tens of trials. A GP's cost grows with its trials (its fit is cubic in them, and the
acquisition is optimised by local search over every integer dimension), and it samples conditional and
categorical dimensions without its model, where TPE models them. So, as Optuna's own AutoSampler (OptunaHub)
chooses, the GP proposes while the study has fewer than `max_gp_trials` finished trials and the space is numeric
and unconditional; TPE proposes otherwise. The choice is made per trial, when the trial starts, so every call for
one trial goes to one sampler.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from lmtune.space import SearchSpace

MAX_GP_TRIALS = 100  # finished trials (pruned ones count: the GP models them); sampler time in BENCHMARKS.md
GP_PAST_TRIALS = 50  # a warm-started GP's share of past studies' trials, all sources together


def gp_fits(space: SearchSpace) -> bool:
    """Whether every dimension of `space` is a numeric range that is always sampled."""
    return all(spec.type == "fixed" or (spec.type in ("float", "int") and not spec.values and not spec.condition)
               for spec in space.params.values())


class ModelChoice(optuna.samplers.BaseSampler):
    """Proposes with `gp` for a trial that starts with fewer than `max_gp_trials` finished trials, else `tpe`.

    Example::

        sampler = ModelChoice(optuna.samplers.GPSampler(seed=0), optuna.samplers.TPESampler(seed=0))
    """

    def __init__(self, gp: optuna.samplers.BaseSampler, tpe: optuna.samplers.BaseSampler,
                 max_gp_trials: int = MAX_GP_TRIALS):
        self.gp, self.tpe, self.max_gp_trials = gp, tpe, max_gp_trials
        self._gp_trials: set[int] = set()
        self._lock = threading.Lock()  # workers' threads start trials concurrently

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        return self.gp if trial.number in self._gp_trials else self.tpe

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True)
        if len(finished) < self.max_gp_trials:
            with self._lock:
                self._gp_trials.add(trial.number)
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        with self._lock:
            self._gp_trials.discard(trial.number)

    def reseed_rng(self) -> None:
        self.gp.reseed_rng()
        self.tpe.reseed_rng()

