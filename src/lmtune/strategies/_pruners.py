from __future__ import annotations

from typing import get_args

import optuna

from lmtune.config import COMBINED, PrunerName, resolve
from lmtune.errors import ConfigError
from lmtune.strategies._lc_pruner import ExtrapolationPruner

PRUNERS: tuple[str, ...] = get_args(PrunerName)
__all__ = ["COMBINED", "PRUNERS", "create_pruner", "resolve"]


def create_pruner(name: str, min_resource: int | None = None, reduction_factor: int = 3,
                  max_resource: int | None = None, prune_on: str | None = None,
                  prune_direction: str | None = None) -> optuna.pruners.BasePruner:
    """The Optuna pruner for `name`; resources are optimizer steps as the trainer reports them.

    - ``asha``: asynchronous successive halving (Li et al. 2020, "A System for Massively Parallel
      Hyperparameter Tuning"): a trial reaching rung k (``min_resource * reduction_factor**k`` steps) goes on
      only if it is in the top ``1/reduction_factor`` of the trials that reached that rung.
    - ``hyperband``: several ASHA brackets with different ``min_resource`` (Li et al. 2018), hedging against
      a too-aggressive first rung; with TPE it is the BOHB-like ``auto`` strategy (Falkner et al. 2018).
    - ``median``: stop a trial whose best value so far is worse than the median of earlier trials at the
      same step (Golovin et al. 2017, Google Vizier).
    - ``extrapolate``: stop a trial once its learning curve, extrapolated to the end of training, is unlikely
      to beat the best finished trial (`ExtrapolationPruner`; Domhan et al. 2015, Kadra et al. 2023). It may
      watch another metric than the objective (`prune_on`, e.g. eval_loss, minimized by `prune_direction`).
    - ``none``: every trial runs to its end (early stopping inside the trial still applies).

    Example::

        pruner = create_pruner("asha", min_resource=25, reduction_factor=3)
    """
    min_r: int | str = min_resource if min_resource is not None else "auto"
    if prune_on is not None and name != "extrapolate":
        raise ConfigError(f"search.prune_on needs search.pruner extrapolate (or strategy auto), not {name!r}")
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_r, reduction_factor=reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource or 1,
                                              max_resource=max_resource if max_resource is not None else "auto",
                                              reduction_factor=reduction_factor)
    if name == "extrapolate":
        return ExtrapolationPruner(min_resource=min_resource or 2, max_resource=max_resource, metric=prune_on,
                                   direction=prune_direction)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min_resource or 0)
    raise ConfigError(f"search.pruner: unknown pruner {name!r}; choose from {list(PRUNERS)}")
