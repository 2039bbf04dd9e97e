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
_MIN_CALIBRATION = 6  # finished curves before its errors calibrate the uncertainty
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


@dataclass(frozen=True)
class _CrossFit:
    coef: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    inverse: np.ndarray  # (X'X + ridge)^-1 of the standardized design, for the prediction interval
    sigma: float
    calibration: float  # factor on the combined standard deviation, from leave-one-out errors on the references


class CurveModel:
    """Predicts final values from partial curves, given the curves of trials that reached `horizon`.

    `references` maps each finished trial to its curve ``{step: value}``; curves are compared at equal steps.
    With `calibrate`, the combined uncertainty is calibrated on the references themselves: each is predicted
    from its own partial curve and a fit without it (leave-one-out), and the standard deviation is widened
    until 80 % of those errors fall within 1.28 of it, as split-conformal prediction does. It is off by
    default: on B2 (BENCHMARKS.md) a wide fixed margin (`ExtrapolationPruner.z` = 6) did better than a
    calibrated width with a small or growing margin. `own_cache` keeps the references' own power-law fits
    between models (they never change).
    """

    def __init__(self, references: Sequence[Mapping[int, float]], horizon: int,
                 own_cache: dict[tuple[int, float, float], Prediction] | None = None, calibrate: bool = False):
        self.horizon, self.calibrate = horizon, calibrate
        self.references = [r for r in references if horizon in r]
        self._fits: dict[int, _CrossFit | None] = {}
        self._own_cache = own_cache if own_cache is not None else {}

    def _own(self, curve: Mapping[int, float], step: int) -> Prediction:
        key = (step, float(curve[step]), float(curve[self.horizon]))
        if key not in self._own_cache:
            steps = sorted(s for s in curve if s <= step)
            self._own_cache[key] = power_law_ensemble(steps, [curve[s] for s in steps], self.horizon)
        return self._own_cache[key]

    def _cross_fit(self, step: int, half: int) -> _CrossFit | None:
        """Ridge fit of final on (value at step, value at step - value at half) over the references."""
        key = step * 100_003 + half
        if key in self._fits:
            return self._fits[key]
        refs = [r for r in self.references if step in r]
        rows = [(r[step], r[step] - r.get(half, r[step]), r[self.horizon]) for r in refs]
        fit = None
        if len(rows) >= _MIN_REFERENCES:
            data = np.asarray(rows, dtype=float)
            mean, sd = data[:, :2].mean(axis=0), data[:, :2].std(axis=0) + 1e-9
            # Centred and scaled, so the ridge penalty means the same for any metric's units.
            x = np.column_stack([np.ones(len(data)), (data[:, :2] - mean) / sd])
            inverse = np.linalg.inv(x.T @ x + _RIDGE * len(data) * np.diag([0.0, 1.0, 1.0]))
            coef = inverse @ x.T @ data[:, 2]
            resid = data[:, 2] - x @ coef
            sigma = float(np.sqrt(np.sum(resid ** 2) / max(len(data) - 3, 1)))
            calibration = 1.0
            if self.calibrate and len(data) >= _MIN_CALIBRATION:
                leverage = np.einsum("ij,jk,ik->i", x, inverse, x)
                loo = data[:, 2] - resid / np.maximum(1.0 - leverage, 1e-3)  # leave-one-out predictions
                loo_sd = sigma * np.sqrt(1.0 + leverage / np.maximum(1.0 - leverage, 1e-3))
                z = []
                for r, c, c_sd, target in zip(refs, loo, loo_sd, data[:, 2], strict=True):
                    own = self._own(r, step)
                    p = _combine(own, float(c), float(c_sd))
                    z.append(abs(target - p.mean) / max(p.std, 1e-12))
                calibration = max(1.0, float(np.quantile(z, 0.8)) / 1.2816)
            fit = _CrossFit(coef, mean, sd, inverse, sigma, calibration)
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
        x = np.concatenate([[1.0], (np.array([value, value - float(curve[half])]) - fit.mean) / fit.sd])
        cross = float(fit.coef @ x)
        # The prediction interval of a linear fit: wider the further the curve lies from the references
        # (a trial far worse than every finished one is extrapolated, not interpolated).
        sigma = fit.sigma * math.sqrt(1.0 + float(x @ fit.inverse @ x))
        combined = _combine(own, cross, sigma)
        return Prediction(combined.mean, combined.std * fit.calibration)


def _combine(own: Prediction, cross: float, cross_sd: float) -> Prediction:
    """Inverse-variance combination of the curve's own extrapolation and the cross-trial prediction."""
    w_own, w_cross = 1.0 / max(own.std, 1e-9) ** 2, 1.0 / max(cross_sd, 1e-9) ** 2
    return Prediction((w_own * own.mean + w_cross * cross) / (w_own + w_cross), math.sqrt(1.0 / (w_own + w_cross)))
