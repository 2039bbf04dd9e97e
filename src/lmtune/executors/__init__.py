"""Running a trial away from the process that asked for it: a forked child (`local`) or a Ray task (`ray`).

The asking side samples the parameters and keeps the trial's heartbeat; the running side attaches to the same
trial in storage, trains, reports intermediate values and attributes through it, and sends back an `Outcome`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import optuna

from lmtune.config import ExperimentConfig
from lmtune.storage import mask_url, open_storage
from lmtune.study import Objective, TrialContext, evaluate

Outcome = tuple[str, Any]  # ("value", float) | ("pruned", None) | ("error", reason)


class TrialError(Exception):
    """The trial failed where it ran; the message is the reason already recorded as its fail_reason."""


@dataclass(frozen=True)
class TrialSpec:
    """What the running side needs to take over an asked trial."""

    trial_id: int
    params: dict[str, Any]
    is_baseline: bool

    @classmethod
    def of(cls, ctx: TrialContext) -> TrialSpec:
        return cls(ctx.trial._trial_id, ctx.params, ctx.is_baseline)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_attached(objective: Objective, cfg: ExperimentConfig, spec: TrialSpec,
                 pruner: optuna.pruners.BasePruner) -> Outcome:
    """Run the objective on a trial another process asked for, through this process's own storage connection.

    The study handle uses a RandomSampler: parameters are already sampled, and a model-based sampler would
    refit its model here for nothing.
    """
    storage = open_storage(cfg.storage, heartbeat_interval=cfg.executor.heartbeat_interval,
                           grace_period=cfg.executor.grace_period)
    study = optuna.Study(cfg.study_name, storage, sampler=optuna.samplers.RandomSampler(), pruner=pruner)
    ctx = TrialContext(optuna.Trial(study, spec.trial_id), spec.params, cfg.objective.metric, spec.is_baseline)
    try:
        return "value", evaluate(objective, ctx)
    except optuna.TrialPruned:
        return "pruned", None
    except Exception as e:
        return "error", mask_url(f"{type(e).__name__}: {e}")


def settle(outcome: Outcome) -> float:
    """The outcome as Optuna expects it back from an objective: a value, TrialPruned, or an exception."""
    kind, value = outcome
    if kind == "pruned":
        raise optuna.TrialPruned()
    if kind == "error":
        raise TrialError(value)
    return float(value)
