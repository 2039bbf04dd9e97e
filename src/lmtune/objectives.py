"""What a study trades off, as users write it: objectives with directions, hard limits, and a rule that picks one
point of a Pareto front.

The text forms are parsed here once, for the config (`objective.constraints: ["peak_memory_bytes <= 20e9"]`) and
for the command line (`lmtune best --pick "exact_match >= 0.9, minimize flops"`), so both give the same errors.
A constraint becomes an Optuna constraint value (<= 0 is feasible: Optuna's convention), which every sampler that
models constraints (TPE, NSGA-II, GP) learns from and which `best`/the Pareto front use to leave infeasible
trials out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lmtune.train.metrics import METRICS

_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(\S+)\s*")
_GOAL = re.compile(r"\s*(minimize|maximize)\s+([A-Za-z_][A-Za-z0-9_]*)\s*")


@dataclass(frozen=True)
class Objective:
    """One metric a study optimises, and which way."""

    name: str
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


@dataclass(frozen=True)
class Condition:
    """A hard limit on a measured metric: `metric <= bound` or `metric >= bound`."""

    metric: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """How far `value` is beyond the limit; <= 0 means it holds (Optuna's constraint convention)."""
        if math.isnan(value):
            return math.inf
        return value - self.bound if self.op == "<=" else self.bound - value

    def holds(self, value: float | None) -> bool:
        return value is not None and self.violation(value) <= 0


def _known(name: str, where: str) -> str:
    if name not in METRICS:
        raise ValueError(f"{where}: unknown metric {name!r}; choose from {list(METRICS)}")
    return name


def parse_condition(text: str) -> Condition:
    """`"peak_memory_bytes <= 20e9"` -> Condition; a ValueError that says what is accepted otherwise."""
    match = _CONDITION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a limit; write METRIC <= NUMBER or METRIC >= NUMBER, e.g. "
                         "'peak_memory_bytes <= 20e9'")
    metric, op, number = match.groups()
    try:
        bound = float(number)
    except ValueError:
        raise ValueError(f"{text!r}: {number!r} is not a number") from None
    if not math.isfinite(bound):
        raise ValueError(f"{text!r}: the bound must be a finite number")
    return Condition(_known(metric, repr(text)), op, bound)


@dataclass(frozen=True)
class PickRule:
    """How to choose one trial among the finished ones: every condition holds, then the best on `goal`."""

    conditions: tuple[Condition, ...]
    goal: Objective | None

    @property
    def text(self) -> str:
        parts = [c.text for c in self.conditions]
        if self.goal is not None:
            parts.append(f"{self.goal.direction} {self.goal.name}")
        return ", ".join(parts)


def parse_pick(text: str) -> PickRule:
    """`"exact_match >= 0.9, minimize flops"`: comma-separated limits and at most one `minimize|maximize METRIC`."""
    conditions, goals = [], []
    for part in (p for p in text.split(",") if p.strip()):
        goal = _GOAL.fullmatch(part)
        if goal is not None:
            direction, name = goal.groups()
            goals.append(Objective(_known(name, f"--pick {text!r}"), direction == "maximize"))
        else:
            try:
                conditions.append(parse_condition(part))
            except ValueError as e:
                raise ValueError(f"--pick {text!r}: {e}; or 'minimize METRIC' / 'maximize METRIC'") from None
    if len(goals) > 1:
        raise ValueError(f"--pick {text!r}: give at most one 'minimize METRIC' or 'maximize METRIC'")
    if not conditions and not goals:
        raise ValueError("--pick is empty; write e.g. 'exact_match >= 0.9, minimize flops'")
    return PickRule(tuple(conditions), goals[0] if goals else None)
