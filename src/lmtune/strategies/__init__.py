"""Search strategies: which configuration to try next, and which running trial to stop early.

Samplers and pruners are Optuna's, chosen and configured here; lmtune adds only what Optuna lacks: grid points
derived from the declared space, combined strategies (``auto`` = TPE + Hyperband), and population-based
training, which Optuna does not have.
"""

from lmtune.strategies._pbt import Member, PopulationBasedTraining, SegmentJob, SegmentResult
from lmtune.strategies._pruners import COMBINED, PRUNERS, create_pruner, resolve
from lmtune.strategies._samplers import STRATEGIES, create_sampler

__all__ = ["COMBINED", "PRUNERS", "STRATEGIES", "Member", "PopulationBasedTraining", "SegmentJob", "SegmentResult",
           "create_pruner", "create_sampler", "resolve"]
