"""Search strategies: which configuration to try next, and which running trial to stop early.

Samplers and pruners are Optuna's, chosen and configured here; lmtune adds what Optuna lacks: grid points
derived from the declared space, combined strategies (``bohb`` = TPE + Hyperband), population-based training,
and ``auto``: learning-curve extrapolation (`_curves`), pruning by predicted final value (`_lc_pruner`), a
layer that shows the model pruned trials at their predicted finals (`_lc_sampler`), the model itself (GP for small
studies, TPE for large ones, `_model_choice`) and the baseline prior (`_prior`), each an Optuna sampler or pruner
so storage, workers and resume work unchanged.
"""

from lmtune.strategies._pbt import Member, PopulationBasedTraining, SegmentJob, SegmentResult
from lmtune.strategies._pruners import COMBINED, PRUNERS, create_pruner, resolve
from lmtune.strategies._samplers import STRATEGIES, create_sampler

__all__ = ["COMBINED", "PRUNERS", "STRATEGIES", "Member", "PopulationBasedTraining", "SegmentJob", "SegmentResult",
           "create_pruner", "create_sampler", "resolve"]
