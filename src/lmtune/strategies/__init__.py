"""Search strategies: which configuration to try next.

Each strategy is an Optuna sampler, chosen and seeded here; lmtune adds only what Optuna lacks (grid points
derived from the declared space, and a startup-trial default sized to the budget).
"""

from lmtune.strategies._samplers import STRATEGIES, create_sampler

__all__ = ["STRATEGIES", "create_sampler"]
