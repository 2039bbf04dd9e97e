"""The scaling-law fit of lmtune.transfer: it recovers known exponents, says why it cannot fit, and guards an
uncertain prediction."""

import math

import numpy as np
import pytest

from lmtune.transfer import Rule, fit, rung_optimum

# Step Law (Li et al. 2025, arXiv 2503.04715): eta = 1.79 N^-0.713 D^0.307, B = 0.58 D^0.571.
ETA = (1.79, -0.713, 0.307)
BATCH = (0.58, 0.0, 0.571)


def _step_law(n: float, d: float) -> tuple[float, float]:
    return ETA[0] * n ** ETA[1] * d ** ETA[2], BATCH[0] * n ** BATCH[1] * d ** BATCH[2]


def _ladder(sizes: list[tuple[float, float]], trials: int, noise: float, seed: int = 0) -> list[dict[str, float]]:
    """Noisy trials around Step Law's optimum on each rung: the search box is off-centre by a random factor,
    so the best trial alone misses the optimum; the loss is a bowl in log-lr and log-batch with a cross term."""
    rng = np.random.default_rng(seed)
    rows = []
    for n, d in sizes:
        eta, b = _step_law(n, d)
        centre = np.log([eta, b]) + rng.uniform(-0.7, 0.7, size=2)
        for _ in range(trials):
            x = centre + rng.uniform(-1.6, 1.6, size=2)
            u, v = x[0] - math.log(eta), x[1] - math.log(b)
            loss = 2.0 + 0.05 * u * u + 0.03 * v * v + 0.015 * u * v + rng.normal(0, noise)
            rows.append({"n_params": n, "n_tokens": d, "learning_rate": math.exp(x[0]),
                         "batch_size": math.exp(x[1]), "loss": loss})
    return rows


SIZES = [(n, d) for n in (1e8, 2.5e8, 6e8) for d in (4e9, 1.6e10, 6.4e10)]


def test_fit_recovers_step_laws_exponents_from_noisy_records():
    rule = fit(_ladder(SIZES, trials=24, noise=0.002))
    assert rule.usable and rule.reason == ""
    lr, batch = rule.laws["learning_rate"], rule.laws["batch_size"]
    for law, truth in ((lr, ETA), (batch, BATCH)):
        for size, exponent in zip(("n_params", "n_tokens"), truth[1:], strict=True):
            value, se = law.exponent(size)
            assert 0 < se < 0.1, (law.name, size, se)
            assert abs(value - exponent) < max(3 * se, 0.03), (law.name, size, value, exponent, se)
    assert all(r.method == "quadratic" for r in rule.rungs)
    # The prediction for a target 4x bigger and with 4x the data than any rung lands near Step Law's values.
    n, d = 2.4e9, 2.56e11
    eta, b = _step_law(n, d)
    pred, band = rule.predict(n, d), rule.band(n, d)
    assert abs(math.log(pred["learning_rate"] / eta)) < 2 * math.log(band["learning_rate"]) + 0.05
    assert abs(math.log(pred["batch_size"] / b)) < 2 * math.log(band["batch_size"]) + 0.05
    assert rule.unsure(n, d) == {}
    # Stored as JSON and read back, the rule predicts the same.
    again = Rule.from_dict(rule.to_dict())
    assert again.predict(n, d) == pytest.approx(pred) and again.band(n, d) == pytest.approx(band)


def test_the_quadratic_beats_the_best_trial_on_a_noisy_rung():
    rows = _ladder([(1e8, 4e9)], trials=16, noise=0.01, seed=3)
    hps = {h: np.array([r[h] for r in rows]) for h in ("learning_rate", "batch_size")}
    loss = np.array([r["loss"] for r in rows])
    opt = rung_optimum(1e8, 4e9, hps, loss)
    eta, _ = _step_law(1e8, 4e9)
    best = hps["learning_rate"][np.argmin(loss)]
    assert opt.method == "quadratic"
    assert abs(opt.log_opt["learning_rate"] - math.log(eta)) < abs(math.log(best / eta))
    assert abs(opt.log_opt["learning_rate"] - math.log(eta)) < 3 * opt.log_se["learning_rate"]


def test_too_few_rungs_fall_back_with_a_reason():
    one = fit(_ladder([(1e8, 4e9)], trials=12, noise=0.002))
    assert not one.usable and one.predict(1e9, 1e11) == {}
    assert "at least 2 rungs; 1 had one" in one.laws["learning_rate"].reason
    # The same size twice is one rung: no size to fit against.
    same = fit(_ladder([(1e8, 4e9)], trials=12, noise=0.002) + _ladder([(1e8, 4e9)], trials=12, noise=0.002, seed=1))
    assert not same.usable
    # A batch size never varied has no optimum to fit; the learning rate still has its law.
    rows = [{**r, "batch_size": 32.0} for r in _ladder(SIZES[:3], trials=12, noise=0.002)]
    rule = fit(rows)
    assert rule.laws["learning_rate"].usable and not rule.laws["batch_size"].usable
    assert "batch_size needs an optimum on at least 2 rungs; 0 had one" in rule.reason
    assert set(rule.predict(1e9, 1e11)) == {"learning_rate"}
    # Two learning rates on a rung say which is better, not where the optimum is: that rung places none.
    two = [r for r in rows if r["n_tokens"] == SIZES[0][1]][:2]
    assert rung_optimum(*SIZES[0], {"learning_rate": np.array([r["learning_rate"] for r in two])},
                        np.array([r["loss"] for r in two])).log_opt == {}
    # Rungs that only change the data size give a law in tokens alone.
    law = rule.laws["learning_rate"]
    assert law.regressors == ("n_tokens",) and law.exponent("n_params") is None


def test_sizes_that_move_together_fit_one_of_them_and_say_so():
    rule = fit(_ladder([(1e8, 4e9), (2e8, 8e9), (4e8, 1.6e10), (8e8, 3.2e10)], trials=16, noise=0.002))
    law = rule.laws["learning_rate"]
    assert law.usable and len(law.regressors) == 1 and "moves with" in law.notes[0]


def test_an_uncertain_prediction_is_guarded():
    # Two close rungs of very noisy trials, extrapolated far: the band explodes and the guard says so.
    rows = _ladder([(1e8, 4e9), (1.2e8, 4e9)], trials=8, noise=0.2, seed=5)
    rule = fit(rows, ["learning_rate"])
    assert rule.laws["learning_rate"].usable
    unsure = rule.unsure(1e11, 4e9, max_factor=3.0)
    assert "learning_rate" in unsure and "uncertain by a factor" in unsure["learning_rate"]
    assert rule.band(1e11, 4e9)["learning_rate"] > 3.0


def test_a_group_offset_does_not_bend_the_bowl():
    # One rung, one bowl in log-lr with its optimum at ln(3e-3); the trials of group "bad" (a worse schedule, say)
    # all lie above the optimum and lose 0.3 more. One bowl through all of them leans away from them; an offset
    # per group recovers the optimum.
    rng = np.random.default_rng(0)
    x = np.log(3e-3) + rng.uniform(-1.5, 1.5, size=18)
    groups = np.where((x > np.log(3e-3) + 0.3) & (np.arange(18) % 2 == 0), "bad", "good")
    loss = 2.0 + 0.1 * (x - np.log(3e-3)) ** 2 + 0.3 * (groups == "bad") + rng.normal(0, 0.003, size=18)
    hps = {"learning_rate": np.exp(x)}
    grouped = rung_optimum(1e8, 4e9, hps, loss, groups)
    pooled = rung_optimum(1e8, 4e9, hps, loss)
    assert grouped.method == "quadratic"
    error = abs(grouped.log_opt["learning_rate"] - np.log(3e-3))
    assert error < 0.1 and error < abs(pooled.log_opt["learning_rate"] - np.log(3e-3)) / 3
    # fit() reads the group from the records; without one every trial is one group.
    rows = [{"n_params": 1e8, "n_tokens": 4e9, "learning_rate": float(np.exp(v)), "batch_size": 32.0,
             "loss": float(y), "group": str(g)} for v, y, g in zip(x, loss, groups, strict=True)]
    assert fit(rows, ["learning_rate"]).rungs[0].log_opt == pytest.approx(grouped.log_opt)


def test_a_best_at_the_edge_of_what_a_rung_tried_places_nothing_sure():
    # Losses still falling at the highest rate tried: the optimum lies beyond it, so the rung's error spans
    # at least the whole range it tried, not the gap to its neighbour.
    lr = np.array([1e-3, 2e-3, 4e-3, 8e-3, 9e-3])
    opt = rung_optimum(1e8, 4e9, {"learning_rate": lr}, 3.0 - np.log(lr) * 0.1)
    assert opt.method == "best trial" and opt.log_opt["learning_rate"] == pytest.approx(math.log(9e-3))
    assert opt.log_se["learning_rate"] == pytest.approx(math.log(9))
    # The same best inside the range is placed as finely as the trials around it allow.
    inside = rung_optimum(1e8, 4e9, {"learning_rate": np.append(lr, 2e-2)},
                          np.append(3.0 - np.log(lr) * 0.1, 4.0))
    assert inside.log_se["learning_rate"] < 0.5
