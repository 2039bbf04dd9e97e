"""Learning-curve extrapolation: predict a trial's value at the end of training from its partial curve.

Two predictors, combined by inverse variance:

- **Power-law ensemble** on the trial's own curve, ``y(s) = a + b * s**-c`` for a fixed set of exponents ``c``
  (each fit is a 2-parameter linear least squares, so the ensemble costs microseconds). Ensembles of power
  laws are what DPL uses (Kadra et al., "Scaling Laws for Hyperparameter Optimization", NeurIPS 2023); the
  spread of the members plus the fit residual is the uncertainty.
- **Cross-trial regression** on the curves of trials that reached the end: ``final ~ y_t + (y_t - y_{t/2})``,
  a ridge fit at the query's step ``t``. It uses what freeze-thaw BO (Swersky et al. 2014) and ifBO (Rakotoarison
  et al., ICML 2024) exploit: curves of the same study resemble each other, so where the others ended says
  more than one curve's shape does, once a few have ended.

Values are whatever the metric is (accuracy, loss); nothing here knows its direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

EXPONENTS = (0.25, 0.5, 1.0, 1.5, 2.5)
_MIN_REFERENCES = 4  # finished curves before the cross-trial regression is trusted
_RIDGE = 1e-3


@dataclass(frozen=True)
class Prediction:
    """Predicted value at the horizon: mean and standard deviation (same units as the metric)."""

    mean: float
    std: float


def power_law_ensemble(steps: Sequence[float], values: Sequence[float], horizon: float) -> Prediction:
    """Extrapolate one partial curve to `horizon` with the power laws of `EXPONENTS`.

    Each member fits ``a + b * s**-c`` by least squares, later points weighted more (they say more about where
    the curve is heading, and early points carry warm-up transients). Members are weighted by their fit error.
    A curve with one point has no shape: it predicts that point, with unbounded uncertainty.

    Example::

        power_law_ensemble([1, 2, 3, 4], [0.5, 0.65, 0.7, 0.725], horizon=20)  # mean near 0.8
    """
    s = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    last = float(y[-1])
    scale = max(float(np.ptp(y)), 1e-3 * max(abs(last), 1.0))
    if len(y) < 2:
        return Prediction(last, math.inf)
    w = s / s.sum()
    preds, errs = [], []
    sw = np.sqrt(w)
    for c in EXPONENTS:
        x = s ** -c
        design = np.stack([np.ones_like(x), x], axis=1) * sw[:, None]
        coef, *_ = np.linalg.lstsq(design, y * sw, rcond=None)
        resid = y - (coef[0] + coef[1] * x)
        preds.append(coef[0] + coef[1] * horizon ** -c)
        errs.append(float(np.sqrt(np.sum(w * resid ** 2) / w.sum())))
    p, e = np.asarray(preds), np.asarray(errs)
    # No member may claim more than the curve's own range again beyond its last value: power laws fitted to a
    # few noisy points can shoot far past anything a real curve does.
    p = np.clip(p, last - 2 * scale, last + 2 * scale)
    weights = np.exp(-0.5 * (e / (e.min() + 1e-9 * scale + 1e-12)) ** 2 / 4)
    weights /= weights.sum()
    mean = float(np.sum(weights * p))
    spread = float(np.sqrt(np.sum(weights * (p - mean) ** 2)))
    # Fewer points and a longer way to go mean less certainty, whatever the members agree on.
    distance = math.log(horizon / s[-1] + 1.0)
    std = math.sqrt(spread ** 2 + (float(e.min()) * (1 + distance)) ** 2) + 0.25 * scale * distance / len(y)
    return Prediction(mean, std)


class CurveModel:
    """Predicts final values from partial curves, given the curves of trials that reached `horizon`.

    `references` maps each finished trial to its curve ``{step: value}``; curves are compared at equal steps.
    """

    def __init__(self, references: Sequence[Mapping[int, float]], horizon: int):
        self.horizon = horizon
        self.references = [r for r in references if horizon in r]
        self._fits: dict[int, tuple[np.ndarray, float] | None] = {}

    def _cross_fit(self, step: int, half: int) -> tuple[np.ndarray, float] | None:
        """Ridge fit of final on (value at step, value at step - value at half) over the references."""
        key = step * 100_003 + half
        if key in self._fits:
            return self._fits[key]
        rows = [(r[step], r[step] - r.get(half, r[step]), r[self.horizon]) for r in self.references if step in r]
        fit = None
        if len(rows) >= _MIN_REFERENCES:
            data = np.asarray(rows, dtype=float)
            x = np.column_stack([np.ones(len(data)), data[:, 0], data[:, 1]])
            target = data[:, 2]
            # Centre and scale so the ridge penalty means the same for any metric's units.
            sd = data[:, :2].std(axis=0) + 1e-9
            xs = x.copy()
            xs[:, 1:] = (x[:, 1:] - data[:, :2].mean(axis=0)) / sd
            penalty = _RIDGE * len(data) * np.diag([0.0, 1.0, 1.0])
            coef = np.linalg.solve(xs.T @ xs + penalty, xs.T @ target)
            resid = target - xs @ coef
            dof = max(len(data) - 3, 1)
            sigma = float(np.sqrt(np.sum(resid ** 2) / dof))
            fit = (np.concatenate([coef, data[:, :2].mean(axis=0), sd]), sigma * math.sqrt(1 + 3 / len(data)))
        self._fits[key] = fit
        return fit

    def predict(self, curve: Mapping[int, float]) -> Prediction:
        """The predicted value at the horizon of a partial curve ``{step: value}``."""
        steps = sorted(k for k, v in curve.items() if math.isfinite(v))
        if not steps:
            return Prediction(math.nan, math.inf)
        step = steps[-1]
        value = float(curve[step])
        if step >= self.horizon:
            return Prediction(value, 0.0)
        own = power_law_ensemble(steps, [curve[s] for s in steps], self.horizon)
        half = max((s for s in steps if s <= step // 2), default=steps[0])
        fit = self._cross_fit(step, half)
        if fit is None:
            return own
        params, sigma = fit
        coef, mean_x, sd_x = params[:3], params[3:5], params[5:7]
        x = (np.array([value, value - float(curve[half])]) - mean_x) / sd_x
        cross = float(coef[0] + coef[1:] @ x)
        # Inverse-variance combination of the two predictors.
        w_own, w_cross = 1.0 / max(own.std, 1e-9) ** 2, 1.0 / max(sigma, 1e-9) ** 2
        mean = (w_own * own.mean + w_cross * cross) / (w_own + w_cross)
        return Prediction(mean, math.sqrt(1.0 / (w_own + w_cross)))
