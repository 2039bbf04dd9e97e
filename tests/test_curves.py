"""Learning-curve extrapolation, pruning by predicted final value, and the sampler that models pruned trials."""

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lmtune import Study
from lmtune.strategies._curves import CurveModel, power_law_ensemble
from lmtune.strategies._lc_pruner import PREDICTION_ATTR, ExtrapolationPruner
from lmtune.strategies._lc_sampler import CurveSampler

HORIZON = 40


def power_law(a: float, b: float, c: float, steps=range(1, HORIZON + 1)) -> dict[int, float]:
    return {s: a - b * s ** -c for s in steps}


def reference_curves(n: int, seed: int = 0, noise: float = 0.0) -> list[dict[int, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.6, 0.8), rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.5)
        out.append({s: v + rng.normal(0, noise) for s, v in power_law(a, b, c).items()})
    return out


def test_power_law_ensemble_predicts_held_out_ends():
    rng = np.random.default_rng(1)
    errors, last_value_errors = [], []
    for _ in range(50):
        a, b, c = rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.6), rng.uniform(0.3, 1.5)
        seen = range(1, 11)  # a quarter of the curve
        p = power_law_ensemble(list(seen), [a - b * s ** -c for s in seen], HORIZON)
        errors.append(abs(p.mean - (a - b * HORIZON ** -c)))
        last_value_errors.append(abs((a - b * 10 ** -c) - (a - b * HORIZON ** -c)))
        assert p.std > 0
    # Beats "the curve stays where it is" by a wide margin, and is close in absolute terms.
    assert np.mean(errors) < 0.3 * np.mean(last_value_errors)
    assert np.mean(errors) < 0.01


def test_curve_model_uses_finished_curves_and_is_calibrated_on_noisy_curves():
    refs = reference_curves(30, seed=2, noise=0.005)
    model = CurveModel(refs, HORIZON)
    held_out = reference_curves(40, seed=3, noise=0.005)
    z = []
    for curve in held_out:
        partial = {s: v for s, v in curve.items() if s <= 5}
        p = model.predict(partial)
        z.append((p.mean - curve[HORIZON]) / p.std)
        own = power_law_ensemble(list(partial), list(partial.values()), HORIZON)
        assert p.std <= own.std + 1e-12  # the references only add information
    z = np.abs(np.asarray(z))
    assert np.mean(z < 2) > 0.8  # uncertainty that means something: most ends within two standard deviations
    assert model.predict({HORIZON: 0.5}).std == 0.0  # a finished curve is its own prediction
    assert math.isinf(power_law_ensemble([3], [0.5], HORIZON).std)  # one point says nothing about the shape


def _study_with(refs: list[dict[int, float]], pruner: optuna.pruners.BasePruner,
                attrs: list[dict] | None = None) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for i, curve in enumerate(refs):
        study.add_trial(create_trial(params={"x": i / len(refs)}, distributions=dist, value=curve[HORIZON],
                                     intermediate_values=curve, user_attrs=attrs[i] if attrs else None))
    return study


def _first_prune(study: optuna.Study, curve: dict[int, float]) -> int | None:
    trial = study.ask()
    for step, value in curve.items():
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, curve[HORIZON])
    return None


def test_pruning_by_prediction_keeps_a_fast_riser_that_a_rung_cuts():
    refs = reference_curves(12, seed=4)
    riser = power_law(0.95, 1.2, 0.7)  # starts low, still climbing steeply at step 4, ends above every reference
    assert riser[HORIZON] > max(r[HORIZON] for r in refs)
    at_rung = sorted(r[4] for r in refs)
    assert riser[4] < at_rung[len(at_rung) * 2 // 3]  # below the top third at the first rung
    # Successive halving's rung at step 4 cuts it. Its rungs are recorded while trials run, so the references
    # run through it first.
    halving = optuna.create_study(direction="maximize",
                                  pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=4, reduction_factor=3))
    for r in refs:
        halving.enqueue_trial({})
        _first_prune(halving, r)
    assert _first_prune(halving, riser) == 4
    study = _study_with(refs, ExtrapolationPruner(min_resource=4, max_resource=HORIZON, z=1.0))
    assert _first_prune(study, riser) is None
    # The same pruner does stop a curve that has flattened out below the incumbent, and says what it predicted.
    flat = power_law(0.55, 0.2, 1.5)
    step = _first_prune(study, flat)
    assert step is not None and step < 10
    pruned = study.trials[-1]
    recorded_step, mean, std = pruned.system_attrs[PREDICTION_ATTR]
    assert recorded_step == step and mean + std < max(r[HORIZON] for r in refs)


def test_prune_on_another_metric_reads_the_curve_attribute():
    """Objective exact-match-like and flat-high; eval_loss says the run has stalled far above the others."""
    refs = reference_curves(8, seed=5)
    attrs = [{"curve": [{"step": s, "eval_loss": 1.0 - v} for s, v in r.items()]} for r in refs]
    study = _study_with(refs, ExtrapolationPruner(min_resource=3, max_resource=HORIZON, metric="eval_loss",
                                                  direction="minimize"), attrs)
    trial = study.ask()
    curve = []
    pruned_at = None
    for step in range(1, HORIZON + 1):
        curve.append({"step": step, "eval_loss": 0.9 - 0.001 * step})  # stalled, far worse than any reference
        trial.set_user_attr("curve", curve)
        trial.report(0.99, step)  # the objective alone would never prune: it beats every reference
        if trial.should_prune():
            pruned_at = step
            break
    assert pruned_at is not None and pruned_at <= 5
    objective_only = _study_with(refs, ExtrapolationPruner(min_resource=3, max_resource=HORIZON))
    assert _first_prune(objective_only, {s: 0.99 for s in range(1, HORIZON + 1)}) is None


def test_curve_sampler_shows_pruned_trials_at_their_predicted_final():
    refs = reference_curves(10, seed=6)
    study = _study_with(refs, optuna.pruners.NopPruner())
    stopped = {s: v for s, v in power_law(0.9, 0.5, 1.0).items() if s <= 8}
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(create_trial(params={"x": 0.5}, distributions=dist, state=TrialState.PRUNED,
                                 intermediate_values=stopped))
    sampler = CurveSampler(optuna.samplers.RandomSampler(seed=0), max_resource=HORIZON)
    view = sampler._view(study)
    seen = view.get_trials(states=(TrialState.COMPLETE,))
    assert len(seen) == len(refs) + 1
    predicted = seen[-1].value
    assert abs(predicted - (0.9 - 0.5 / HORIZON)) < abs(stopped[8] - (0.9 - 0.5 / HORIZON))
    assert study.trials[-1].state == TrialState.PRUNED  # the storage itself is untouched


def _toy_curve(x: float, step: int) -> float:
    """Curves that end best near x = 0.35 and rise slowest there, so early values hide the best."""
    return 0.9 - (x - 0.3) ** 2 - 0.5 * step ** -(0.3 + 2 * abs(x - 0.3))


def _objective(ctx):
    steps, value = 20, 0.0
    for step in range(1, steps + 1):
        value = _toy_curve(ctx.params["x"], step)
        if ctx.report(step, {"acc": value, "eval_loss": 1 - value}):
            break
    ctx.set("cost", {"fte": step / steps})
    return {"acc": value}


@pytest.mark.parametrize("prune_on", [None, "eval_loss"])
def test_auto_strategy_prunes_learns_and_finds_a_good_config(prune_on):
    study = Study("lc", "memory://", space={"x": {"low": 0.0, "high": 1.0}}, strategy="auto", metric="acc",
                  direction="maximize", seed=0, baseline={"x": 0.9}, max_resource=20, prune_on=prune_on,
                  prune_direction="minimize" if prune_on else None)
    sampler = study.optuna.sampler
    assert isinstance(getattr(sampler, "inner", None), CurveSampler)  # under the baseline prior (test_prior.py)
    study.optimize(_objective, budget_fte=8)
    trials = study.trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert trials[0].state == TrialState.COMPLETE  # the baseline runs to its end
    assert pruned and all(PREDICTION_ATTR in t.system_attrs for t in pruned)
    assert len(trials) > 8  # pruning bought more trials than 8 full runs
    optimum = max(_toy_curve(x, 20) for x in np.linspace(0, 1, 10001))
    assert study.best_trial.value > optimum - 0.01


def test_prune_on_needs_the_extrapolating_pruner():
    with pytest.raises(Exception, match="prune_on"):
        Study("x", "memory://", space={"x": {"low": 0.0, "high": 1.0}}, strategy="asha", prune_on="eval_loss")
