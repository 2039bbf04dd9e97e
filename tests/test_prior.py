"""Prior-guided sampling around the baseline (PriorBand-style), and its retreat from a bad baseline."""

import math

import numpy as np
import optuna

from lmtune import Study
from lmtune.records import PRIOR_SOURCE
from lmtune.strategies._prior import PriorSampler, _perturb

SPACE = {"x": {"low": 0.0, "high": 1.0}, "lr": {"low": 1e-5, "high": 1e-1, "log": True},
         "opt": ["adamw", "sgd", "rmsprop"]}


def _unit_distance(params: dict, centre: dict) -> float:
    dx = params["x"] - centre["x"]
    dlr = (math.log(params["lr"]) - math.log(centre["lr"])) / math.log(1e4)
    return math.hypot(dx, dlr)


def _first_proposals(baseline: dict | None, objective, n: int = 10, seed: int = 0) -> list[tuple[dict, str]]:
    """(parameters, where the sampler drew them from) of the first trials after the baseline."""
    study = Study("p", "memory://", space=SPACE, strategy="auto", metric="v", direction="maximize", seed=seed,
                  baseline=baseline)
    study.optimize(objective, n_trials=n)
    trials = sorted(study.trials, key=lambda t: t.number)
    return [(t.params, t.system_attrs.get(PRIOR_SOURCE)) for t in trials if not t.user_attrs.get("baseline")]


def test_first_proposals_concentrate_near_the_baseline():
    """Half of them are drawn around it; the other half are uniform draws, the reference a bad baseline would
    lose to (`test_a_bad_prior_loses_its_share`)."""
    baseline = {"x": 0.8, "lr": 1e-3, "opt": "sgd"}

    def objective(ctx):
        return {"v": -_unit_distance(ctx.params, baseline)}

    guided = _first_proposals(baseline, objective)
    near = [_unit_distance(p, baseline) for p, source in guided if source == "prior"]
    assert len(near) >= 3 and np.median(near) < 0.2
    unguided = [_unit_distance(p, baseline) for p, _ in _first_proposals(None, objective)]
    assert np.median([_unit_distance(p, baseline) for p, _ in guided]) < np.median(unguided) - 0.1
    # A categorical near the baseline keeps the baseline's choice most of the time.
    rng = np.random.default_rng(0)
    dist = optuna.distributions.CategoricalDistribution(["adamw", "sgd", "rmsprop"])
    kept = np.mean([_perturb(dist, "sgd", 0.15, rng) == "sgd" for _ in range(2000)])
    assert 0.75 < kept < 0.85  # 0.7 kept + 0.3 / 3 redrawn as sgd


def test_a_bad_prior_loses_its_share():
    """The baseline sits in the worst corner; the objective rewards the opposite one."""
    baseline = {"x": 0.0, "lr": 1e-5, "opt": "sgd"}

    def objective(ctx):
        return {"v": ctx.params["x"] + math.log10(ctx.params["lr"])}

    study = Study("bad", "memory://", space=SPACE, strategy="auto", metric="v", direction="maximize", seed=1,
                  baseline=baseline)
    assert isinstance(study.optuna.sampler, PriorSampler)
    study.optimize(objective, n_trials=40)
    trials = sorted(study.trials, key=lambda t: t.number)
    sources = [t.system_attrs.get(PRIOR_SOURCE) for t in trials[1:]]
    early, late = sources[:10].count("prior"), sources[-20:].count("prior")
    assert early >= 3 and late <= 2
    # TPE's start-up is its own: uniform draws over the whole space, not the prior's cluster in the bad corner.
    uniform = [t.params for t in trials[1:] if t.system_attrs.get(PRIOR_SOURCE) == "uniform"]
    assert len(uniform) == 5 and max(_unit_distance(p, baseline) for p in uniform) > 0.5
    assert study.best_trial.params["x"] > 0.7 and study.best_trial.params["lr"] > 1e-2


def test_prior_proposals_stay_inside_the_space():
    sampler = PriorSampler(optuna.samplers.RandomSampler(seed=0), prior={"x": 1.0, "k": 3}, seed=0, p_prior=1.0)
    study = optuna.create_study(sampler=sampler)

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0, step=0.1)
        k = trial.suggest_int("k", 1, 3)
        return x + k

    study.optimize(objective, n_trials=30)
    xs = [t.params["x"] for t in study.trials]
    assert all(0.0 <= x <= 1.0 and abs(round(x * 10) - x * 10) < 1e-9 for x in xs)
    assert all(t.params["k"] in (1, 2, 3) for t in study.trials)
