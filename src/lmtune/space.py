"""Search space: validated parameter specs -> Optuna suggestions, with conditional parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.trial import FrozenTrial

from lmtune.config import ParamSpec


class SearchSpace:
    """Parameters sampled in dependency order; a conditional one is only sampled when its condition holds,
    so TPE never learns from a `momentum` that AdamW ignored."""

    def __init__(self, params: Mapping[str, ParamSpec | Mapping[str, Any] | Any]):
        self.params: dict[str, ParamSpec] = {
            n: p if isinstance(p, ParamSpec) else ParamSpec.model_validate(p) for n, p in params.items()
        }
        self.order = _dependency_order(self.params)

    def __bool__(self) -> bool:
        return bool(self.params)

    def suggest(self, trial: optuna.Trial, baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The trial's parameters. For the baseline trial they are the baseline's own values; those that lie
        inside the space were enqueued and are registered with the trial so samplers learn from them."""
        chosen: dict[str, Any] = {}
        enqueued = self.clip_to_space(baseline) if baseline is not None else {}
        for name in self.order:
            spec = self.params[name]
            if not self.active(spec, chosen):
                continue
            if baseline is not None and name in baseline and name not in enqueued:
                chosen[name] = baseline[name]
            else:
                chosen[name] = _suggest_one(trial, name, spec)
        return chosen

    @staticmethod
    def active(spec: ParamSpec, chosen: Mapping[str, Any]) -> bool:
        for parent, wanted in (spec.condition or {}).items():
            wanted_list = wanted if isinstance(wanted, list) else [wanted]
            if parent not in chosen or chosen[parent] not in wanted_list:
                return False
        return True

    def incompatible_with(self, trials: list[FrozenTrial]) -> tuple[str, BaseDistribution, BaseDistribution] | None:
        """A dimension whose stored trials were sampled from a distribution this space cannot continue (other
        categorical choices, a categorical turned into a range or back): (name, stored, declared), or None.
        Optuna fails every new trial of such a study, so it must be refused before one starts."""
        for t in trials:
            for name, stored in t.distributions.items():
                declared = distribution(self.params[name]) if name in self.params else None
                if declared is None:
                    continue
                try:
                    check_distribution_compatibility(stored, declared)
                except ValueError:
                    return name, stored, declared
        return None

    def grid(self) -> dict[str, list[Any]]:
        """Grid points per sampled dimension (fixed values are not dimensions)."""
        out: dict[str, list[Any]] = {}
        for name, spec in self.params.items():
            if spec.type == "fixed":
                continue
            if spec.type == "categorical":
                out[name] = list(spec.choices or [])
            elif spec.values:
                out[name] = list(spec.values)
            else:
                assert spec.low is not None and spec.high is not None
                step = spec.step or 1
                n = int(round((spec.high - spec.low) / step)) + 1
                vals = [spec.low + i * step for i in range(n)]
                out[name] = [int(v) for v in vals] if spec.type == "int" else vals
        return out

    def grid_size(self) -> int:
        size = 1
        for values in self.grid().values():
            size *= len(values)
        return size

    def clip_to_space(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The subset of `values` that the sampler may be handed for a trial (e.g. the baseline)."""
        out: dict[str, Any] = {}
        for name in self.order:
            spec = self.params[name]
            if spec.type == "fixed" or name not in values or not self.active(spec, {**values, **out}):
                continue
            if _contains(spec, values[name]):
                out[name] = values[name]
        return out


def _contains(spec: ParamSpec, value: Any) -> bool:
    if spec.type == "categorical" or spec.values:
        return value in (spec.choices if spec.type == "categorical" else spec.values or [])
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    assert spec.low is not None and spec.high is not None
    if not spec.low <= value <= spec.high:
        return False
    step = spec.step or (1 if spec.type == "int" else None)
    return step is None or abs((value - spec.low) / step - round((value - spec.low) / step)) < 1e-9


def distribution(spec: ParamSpec) -> BaseDistribution | None:
    """The Optuna distribution a dimension is sampled from; None for a fixed value (never sampled)."""
    if spec.type == "fixed":
        return None
    if spec.type == "categorical":
        return CategoricalDistribution(spec.choices or [])
    if spec.values:  # grid points declared for a numeric dimension
        return CategoricalDistribution(spec.values)
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)


def _suggest_one(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    dist = distribution(spec)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return spec.value


def _dependency_order(params: Mapping[str, ParamSpec]) -> list[str]:
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for parent in params[name].condition or {}:
            if parent in params:
                visit(parent)
        order.append(name)

    for n in params:
        visit(n)
    return order
