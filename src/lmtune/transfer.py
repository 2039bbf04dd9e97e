"""Scaling-law transfer: how the optimal learning rate and batch size move with model and data size, fitted from
every trial of a ladder of proxies and extrapolated to the target.

Pure functions over plain records (numpy only, no Optuna or torch), so any set of runs can be checked with it::

    rule = lmtune.transfer.fit(records)        # every trial of every rung, not only the optima
    rule.predict(n_params, n_tokens)           # {"learning_rate": ..., "batch_size": ...}

A record is a mapping (or an object with attributes) with ``n_params``, ``n_tokens`` (training tokens),
``learning_rate``, ``batch_size`` (effective, in sequences) and ``loss`` (lower is better), and optionally a
``group``: any value naming what else the trial varied (its scheduler, optimizer...). Records sharing
``(n_params, n_tokens)`` form one rung. The fit has two steps, each with its uncertainty:

1. Per rung, a quadratic in the log hyperparameters fitted to the losses of the trials nearest the rung's best:
   its vertex is the rung's optimum, and the delta method on the quadratic's coefficients gives its standard
   error. Using the neighbours of the best, not the best alone, is what makes a rung of a few noisy trials
   informative. Each group gets its own offset on one shared bowl, so a trial whose schedule cost it 0.3 in loss
   does not bend the bowl (on a short run the schedule moves the loss as much as the rate does). Where the losses
   are not convex around the best, the best trial stands in, with an error of the spacing to its neighbours (or
   the spread of the trials about as good, or the whole range tried where the best is at its edge: the optimum
   then lies beyond it). A rung needs 3 distinct values of a hyperparameter to place its
   optimum: the better of two does not say where the optimum lies.
2. Across rungs, weighted least squares of ln(optimum) on (1, ln N, ln D) with weights 1/se^2; the parameter
   errors are scaled up by the reduced chi^2 when it exceeds 1 (the Birge ratio), so rungs that disagree more
   than their own errors say widen the prediction. A size that takes one value on every rung drops out of the
   law, as does the smaller-spread one of two sizes that move together (they cannot be told apart).

A law that cannot be fitted says why (`Law.reason`); the caller then falls back to a fixed rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HYPERPARAMETERS = ("learning_rate", "batch_size")
SIZES = ("n_params", "n_tokens")
MIN_LOG_SE = 0.02  # no rung's optimum is known better than 2 %: one lucky quadratic must not outweigh the rest
COLLINEAR = 0.98  # |correlation| of ln N and ln D across rungs above which the two cannot be told apart


def _get(record: Any, key: str, *default: Any) -> Any:
    """A record's field; with a default, an optional one."""
    if isinstance(record, Mapping):
        return record.get(key, *default) if default else record[key]
    return getattr(record, key, *default)


# ------------------------------------------------------------------------------------------------ one rung
@dataclass(frozen=True)
class RungOptimum:
    """One rung's optimum of each hyperparameter it varied, in ln units, with its standard error."""

    n_params: float
    n_tokens: float
    n_trials: int
    log_opt: dict[str, float]
    log_se: dict[str, float]
    method: str  # "quadratic" (the vertex of the fitted quadratic) or "best trial"


def rung_optimum(n_params: float, n_tokens: float, hps: dict[str, np.ndarray], loss: np.ndarray,
                 groups: np.ndarray | None = None) -> RungOptimum:
    """The optimum of one rung's trials (`hps`: name -> values, `loss`: lower is better, `groups`: each trial's
    group, or None for one group)."""
    ok = np.isfinite(loss) & np.all([np.isfinite(v) & (v > 0) for v in hps.values()], axis=0)
    loss = loss[ok]
    group_ids = np.unique(np.asarray(groups)[ok], return_inverse=True)[1] if groups is not None else \
        np.zeros(len(loss), dtype=int)
    logs = {h: np.log(v[ok]) for h, v in hps.items()}
    # Two values bracket nothing: the better of two says which side is better, not where the optimum is.
    varied = [h for h, v in logs.items() if len(np.unique(v)) >= 3]
    if not varied or np.ptp(loss) == 0:  # nothing varied enough, or nothing it changed: no optimum to read
        return RungOptimum(n_params, n_tokens, len(loss), {}, {}, "best trial")
    best = int(np.argmin(loss))
    opt = {h: float(logs[h][best]) for h in varied}
    # The best trial's error: the spread of the trials about as good as it (within a tenth of the losses'
    # range), at least the spacing to its neighbours; a flat or tied rung thus counts for little.
    close = loss <= loss[best] + 0.1 * np.ptp(loss)
    se = {h: max(_spacing(logs[h], logs[h][best]), float(np.std(logs[h][close])),
                 # a best at the edge of what the rung tried says only that the optimum lies beyond it
                 float(np.ptp(logs[h])) if logs[h][best] in (logs[h].min(), logs[h].max()) else 0.0)
          for h in varied}
    curved = varied
    # Jointly where it can (the learning rate's optimum moves with the batch size), else one at a time.
    attempts = [curved] + ([[h] for h in curved] if len(curved) > 1 else [])
    method = "best trial"
    for dims in attempts:
        if not dims or not all(opt[h] == logs[h][best] for h in dims):
            continue  # a dimension already placed by the joint fit
        found = _quadratic_vertex(np.column_stack([logs[h] for h in dims]), loss, best, group_ids)
        if found is not None:
            for h, v, s in zip(dims, *found, strict=True):
                opt[h], se[h] = float(v), float(s)
            method = "quadratic"
    return RungOptimum(n_params, n_tokens, len(loss), opt, {h: max(s, MIN_LOG_SE) for h, s in se.items()}, method)


def _spacing(values: np.ndarray, at: float) -> float:
    """Half the mean gap from `at` to its nearest distinct neighbours: how finely the search resolved it."""
    distinct = np.unique(values)
    lower, higher = distinct[distinct < at], distinct[distinct > at]
    gaps = [at - lower.max()] if len(lower) else []
    gaps += [higher.min() - at] if len(higher) else []
    return float(np.mean(gaps)) / 2 if gaps else 1.0


def _features(z: np.ndarray, group_ids: np.ndarray, reference: int) -> np.ndarray:
    """The quadratic's columns, then an offset column per group other than the `reference` one (present only)."""
    d = z.shape[1]
    cols = [np.ones(len(z)), *(z[:, j] for j in range(d))]
    cols += [z[:, i] * z[:, j] for i in range(d) for j in range(i, d)]
    cols += [(group_ids == g).astype(float) for g in np.unique(group_ids) if g != reference]
    return np.column_stack(cols)


def _vertex(beta: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(vertex, Hessian) of the quadratic with coefficients `beta` (as `_features` orders them)."""
    g = beta[1:1 + d]
    h = np.zeros((d, d))
    k = 1 + d
    for i in range(d):
        for j in range(i, d):
            h[i, j] += beta[k] * (2 if i == j else 1)
            h[j, i] = h[i, j]
            k += 1
    return -np.linalg.solve(h, g), h


def _quadratic_vertex(x: np.ndarray, loss: np.ndarray, best: int, group_ids: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """The vertex of a quadratic (with an offset per group) fitted to the trials nearest the best, and its
    standard errors; None where the fit is not identified, not convex, or puts the vertex outside the trials it
    was fitted to."""
    n, d = x.shape
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - x[best]) / scale
    # Enough of the nearest trials for twice the coefficients of every group's offset...
    m = min(n, max(2 * (1 + d + d * (d + 1) // 2 + len(np.unique(group_ids)) - 1), math.ceil(0.6 * n)))
    near = np.argsort(np.linalg.norm(z, axis=1), kind="stable")[:m]
    phi, y = _features(z[near], group_ids[near], group_ids[best]), loss[near]
    p = phi.shape[1]  # ...but only the groups among them get a column
    if m <= p:
        return None
    if np.linalg.matrix_rank(phi) < p:
        return None
    beta, *_ = np.linalg.lstsq(phi, y, rcond=None)
    try:
        vertex, hessian = _vertex(beta, d)
    except np.linalg.LinAlgError:
        return None
    if np.any(np.linalg.eigvalsh(hessian) <= 0):
        return None
    lo, hi = z[near].min(axis=0), z[near].max(axis=0)
    if np.any(vertex < lo) or np.any(vertex > hi):
        return None
    sigma2 = float(np.sum((y - phi @ beta) ** 2)) / (m - p)
    cov = sigma2 * np.linalg.pinv(phi.T @ phi)
    jac = np.zeros((d, p))  # d vertex / d beta, by central differences
    for k in range(p):
        step = 1e-6 * max(1.0, abs(beta[k]))
        up, down = beta.copy(), beta.copy()
        up[k] += step
        down[k] -= step
        jac[:, k] = (_vertex(up, d)[0] - _vertex(down, d)[0]) / (2 * step)
    se = np.sqrt(np.maximum(np.diag(jac @ cov @ jac.T), 0.0))
    return x[best] + vertex * scale, se * scale


# ------------------------------------------------------------------------------------------------ across rungs
@dataclass(frozen=True)
class Law:
    """ln(optimal value) = coef[0] + sum coef[i] ln(size_i) over `regressors`, with the coefficients'
    covariance; or, when `usable` is False, the reason there is none."""

    name: str
    usable: bool
    reason: str = ""
    regressors: tuple[str, ...] = ()
    coef: tuple[float, ...] = ()
    cov: tuple[tuple[float, ...], ...] = ()
    n_rungs: int = 0
    notes: tuple[str, ...] = ()

    def exponent(self, size: str) -> tuple[float, float] | None:
        """(exponent, standard error) of `size` ("n_params" or "n_tokens"), or None when it is not in the law."""
        if size not in self.regressors:
            return None
        i = 1 + self.regressors.index(size)
        return self.coef[i], math.sqrt(max(self.cov[i][i], 0.0))

    def log_predict(self, n_params: float, n_tokens: float) -> tuple[float, float]:
        """(ln of the predicted optimum, its standard error) at this size."""
        sizes = {"n_params": n_params, "n_tokens": n_tokens}
        v = np.array([1.0, *(math.log(sizes[r]) for r in self.regressors)])
        return float(v @ np.array(self.coef)), float(math.sqrt(max(v @ np.array(self.cov) @ v, 0.0)))

    def describe(self) -> str:
        """`N^-0.71±0.05 · D^0.31±0.08`, or why there is no law."""
        if not self.usable:
            return f"no fit ({self.reason})"
        parts = []
        for size, letter in zip(SIZES, "ND", strict=True):
            e = self.exponent(size)
            if e is not None:
                parts.append(f"{letter}^{e[0]:.3g}±{e[1]:.2g}")
        return " · ".join(parts) or "a constant"


def fit_law(name: str, optima: list[RungOptimum]) -> Law:
    """The weighted log-linear law of `name`'s optimum across the rungs that estimated it."""
    rungs = [r for r in optima if name in r.log_opt]
    if len(rungs) < 2:
        return Law(name, False, f"{name} needs an optimum on at least 2 rungs; {len(rungs)} had one "
                   "(a rung needs at least 3 distinct values of it among its finished trials)", n_rungs=len(rungs))
    logs = {s: np.log([getattr(r, s) for r in rungs]) for s in SIZES}
    regressors = [s for s in SIZES if np.ptp(logs[s]) > 1e-9]
    notes: list[str] = []
    if not regressors:
        return Law(name, False, "every rung has the same n_params and n_tokens: no size to fit against",
                   n_rungs=len(rungs))
    if len(regressors) == 2 and (len(rungs) < 3 or abs(np.corrcoef(logs["n_params"], logs["n_tokens"])[0, 1])
                                 > COLLINEAR):
        keep = max(regressors, key=lambda s: np.ptp(logs[s]))
        dropped = next(s for s in regressors if s != keep)
        regressors = [keep]
        notes.append(f"{dropped} moves with {keep} across the rungs (or there are too few rungs for both), so "
                     f"the law is in {keep} alone and carries {dropped}'s effect along that path")
    x = np.column_stack([np.ones(len(rungs)), *(logs[s] for s in regressors)])
    y = np.array([r.log_opt[name] for r in rungs])
    w = 1.0 / np.array([r.log_se[name] for r in rungs]) ** 2
    xtwx = x.T @ (x * w[:, None])
    if np.linalg.cond(xtwx) > 1e12:
        return Law(name, False, "the rungs' sizes give an ill-conditioned fit", n_rungs=len(rungs))
    cov = np.linalg.inv(xtwx)
    coef = cov @ (x.T @ (w * y))
    dof = len(rungs) - x.shape[1]
    if dof > 0:
        chi2 = float(np.sum(w * (y - x @ coef) ** 2)) / dof
        if chi2 > 1:
            cov = cov * chi2
            notes.append(f"the rungs scatter {math.sqrt(chi2):.2g}x more than their errors; errors widened")
    return Law(name, True, "", tuple(regressors), tuple(map(float, coef)),
               tuple(tuple(map(float, row)) for row in cov), len(rungs), tuple(notes))


# ------------------------------------------------------------------------------------------------ the rule
@dataclass(frozen=True)
class Rule:
    """The fitted laws of the learning rate and the batch size, and the rung optima they were fitted to."""

    laws: dict[str, Law]
    rungs: list[RungOptimum] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Every hyperparameter has a law."""
        return all(law.usable for law in self.laws.values())

    @property
    def reason(self) -> str:
        """Why some hyperparameter has no law ("" when all have one)."""
        return "; ".join(law.reason for law in self.laws.values() if not law.usable)

    def predict(self, n_params: float, n_tokens: float) -> dict[str, float]:
        """The predicted optimum of each hyperparameter that has a law, at this model and data size."""
        return {h: math.exp(law.log_predict(n_params, n_tokens)[0]) for h, law in self.laws.items() if law.usable}

    def band(self, n_params: float, n_tokens: float) -> dict[str, float]:
        """Each prediction's one-standard-error factor: the optimum lies within value /÷ factor, about 2 in 3
        times, if the law holds."""
        return {h: math.exp(law.log_predict(n_params, n_tokens)[1]) for h, law in self.laws.items() if law.usable}

    def unsure(self, n_params: float, n_tokens: float, max_factor: float = 3.0) -> dict[str, str]:
        """The hyperparameters whose prediction here is too uncertain to use (band factor > `max_factor`),
        each with the reason."""
        return {h: f"its prediction is uncertain by a factor {f:.2g} (more than {max_factor:g})"
                for h, f in self.band(n_params, n_tokens).items() if f > max_factor}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, as stored on a study."""
        return {"laws": {h: {k: getattr(law, k) for k in ("name", "usable", "reason", "regressors", "coef", "cov",
                                                           "n_rungs", "notes")} for h, law in self.laws.items()},
                "rungs": [r.__dict__ for r in self.rungs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        laws = {h: Law(**{**d, "regressors": tuple(d["regressors"]), "coef": tuple(d["coef"]),
                          "cov": tuple(tuple(r) for r in d["cov"]), "notes": tuple(d["notes"])})
                for h, d in data["laws"].items()}
        return cls(laws, [RungOptimum(**r) for r in data.get("rungs", [])])


def fit(records: Iterable[Any], hyperparameters: Iterable[str] = HYPERPARAMETERS) -> Rule:
    """Fit the laws of `hyperparameters`' optima in (n_params, n_tokens) from every trial of every rung."""
    names = list(hyperparameters)
    rows = list(records)
    groups: dict[tuple[float, float], list[Any]] = {}
    for r in rows:
        groups.setdefault((float(_get(r, "n_params")), float(_get(r, "n_tokens"))), []).append(r)
    optima = []
    for (n, d), group in sorted(groups.items(), key=lambda kv: kv[0][0] * kv[0][1]):
        hps = {h: np.array([float(_get(r, h)) for r in group]) for h in names}
        labels = np.array([str(_get(r, "group", None)) for r in group])
        optima.append(rung_optimum(n, d, hps, np.array([float(_get(r, "loss")) for r in group]), labels))
    return Rule({h: fit_law(h, optima) for h in names}, optima)
