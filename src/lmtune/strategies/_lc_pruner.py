"""Pruning by predicted final value: stop a trial once its extrapolated learning curve is unlikely to beat
the incumbent, instead of cutting a fixed fraction at fixed rungs.

A rung-based pruner (ASHA, Hyperband) compares trials at equal steps, so a slow starter whose curve still rises
steeply is cut as readily as a flat one. Here each trial's final value is predicted from its own curve and the
curves of the trials that finished (`_curves.CurveModel`), and the trial stops when even an optimistic final
(mean + `z` standard deviations) falls short of the best final value so far. This is the stopping rule of
learning-curve extrapolation (Domhan et al., IJCAI 2015) and of DPL (Kadra et al., NeurIPS 2023), with the
cheap extrapolator of `_curves`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune.records import TrialRecord, maximizes
from lmtune.strategies._curves import CurveModel, Prediction

PREDICTION_ATTR = "lc_prediction"  # system attribute: [step, mean, std] of the last prediction made for a trial


def metric_curve(trial: FrozenTrial, metric: str | None) -> dict[int, float]:
    """The trial's curve ``{step: value}`` of `metric`, or of the objective (its intermediate values) for None.

    Another metric is read from the ``curve`` user attribute that `TrialContext.report` keeps; an entry without
    a ``step`` is matched by position to the trial's reported steps.
    """
    if metric is None:
        return {int(k): float(v) for k, v in trial.intermediate_values.items() if math.isfinite(v)}
    steps = sorted(trial.intermediate_values)
    out: dict[int, float] = {}
    for i, entry in enumerate(TrialRecord(trial).curve):
        step = entry.get("step", steps[i] if i < len(steps) else None)
        value = entry.get(metric)
        if step is not None and value is not None and math.isfinite(float(value)):
            out[int(step)] = float(value)
    return out


class CurveModels:
    """The `CurveModel` of a study's finished trials, rebuilt only when another trial has finished."""

    def __init__(self, metric: str | None = None, max_resource: int | None = None, calibrate: bool = False):
        self.metric, self.max_resource, self.calibrate = metric, max_resource, calibrate
        self.key: tuple[int, int] | None = None
        self._model: CurveModel | None = None
        self._finals: list[float] = []
        self._own_cache: dict = {}  # references' own extrapolations, kept between models

    def get(self, study: optuna.Study) -> tuple[CurveModel, list[float]] | None:
        """(model, final values of the finished trials), or None while no trial has finished."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        key = (id(study._storage) ^ study._study_id, len(complete))
        if key != self.key:
            curves = [c for c in (metric_curve(t, self.metric) for t in complete) if c]
            horizon = self.max_resource or _common_end(curves)
            finals = [c[horizon] for c in curves if horizon is not None and horizon in c]
            self._model = (CurveModel(curves, horizon, self._own_cache, self.calibrate)
                           if finals and horizon is not None else None)
            self._finals, self.key = finals, key
        return (self._model, self._finals) if self._model is not None else None


def _common_end(curves: list[Mapping[int, float]]) -> int | None:
    """The step where most finished curves end: the full training length when it is not given."""
    ends: dict[int, int] = {}
    for c in curves:
        end = max(c)
        ends[end] = ends.get(end, 0) + 1
    return max(ends, key=lambda e: (ends[e], e)) if ends else None


class ExtrapolationPruner(optuna.pruners.BasePruner):
    """Stop a trial whose predicted final value, `z` standard deviations optimistic, is worse than the best
    final value of the study. Checked from `min_resource` steps on, at steps `check_ratio` apart
    geometrically (``min_resource * check_ratio**k``), so a noisy curve is not tested at every evaluation.

    With `z_start` the margin grows linearly from `z_start` at step 0 to `z` at the end of training: a stop early
    saves most of a run and risks little, while a stop near the end saves little and may lose a finished
    winner, so late decisions ask for more certainty.

    `metric` prunes on another metric of the trial's ``curve`` attribute (a smooth one such as eval_loss,
    ``search.prune_on``) in `direction`; None prunes on the objective.

    Example::

        pruner = ExtrapolationPruner(min_resource=2, z=6.0)  # the defaults, chosen on B2 (BENCHMARKS.md)
    """

    def __init__(self, min_resource: int = 2, max_resource: int | None = None, z: float = 6.0,
                 check_ratio: float = 1.5, metric: str | None = None, direction: str | None = None,
                 min_finished: int = 1, z_start: float | None = None, calibrate: bool = False):
        self.min_resource, self.z, self.check_ratio = max(1, min_resource), z, check_ratio
        self.z_start = z if z_start is None else z_start
        self.metric, self.direction, self.min_finished = metric, direction, min_finished
        self.models = CurveModels(metric, max_resource, calibrate)
        self._checks = [self.min_resource]  # check_ratio <= 1: every evaluation from min_resource on

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        curve = metric_curve(trial, self.metric)
        if not curve:
            return False
        step = max(curve)
        if step < self.min_resource or not self._due(sorted(curve)):
            return False
        got = self.models.get(study)
        if got is None or len(got[1]) < self.min_finished:
            return False
        model, finals = got
        if step >= model.horizon:
            return False
        prediction = model.predict(curve)
        if not math.isfinite(prediction.mean):
            return False
        _record(study, trial, step, prediction)
        maximize = self._maximize(study)
        incumbent = max(finals) if maximize else min(finals)
        z = self.z_start + (self.z - self.z_start) * step / model.horizon
        if maximize:
            return prediction.mean + z * prediction.std < incumbent
        return prediction.mean - z * prediction.std > incumbent

    def _maximize(self, study: optuna.Study) -> bool:
        if self.direction is not None:
            return self.direction == "maximize"
        return maximizes(study)

    def _due(self, steps: list[int]) -> bool:
        """A check step was reached by the latest evaluation (evaluations need not land on check steps)."""
        step, previous = steps[-1], steps[-2] if len(steps) > 1 else 0
        return any(previous < c <= step for c in self._checks_up_to(step))

    def _checks_up_to(self, step: int) -> list[int]:
        while self._checks[-1] < step:
            self._checks.append(max(self._checks[-1] + 1, int(math.ceil(self._checks[-1] * self.check_ratio))))
        return self._checks


def _record(study: optuna.Study, trial: FrozenTrial, step: int, prediction: Prediction) -> None:
    """Keep the prediction with the trial: the sampler and the report can show why it stopped."""
    value: list[Any] = [step, prediction.mean, prediction.std if math.isfinite(prediction.std) else None]
    study._storage.set_trial_system_attr(trial._trial_id, PREDICTION_ATTR, value)
