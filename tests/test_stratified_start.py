"""Startup trials from a Latin hypercube: a few of them span the space, and a ladder's rungs use them."""

import math

import pytest

from lmtune import Study
from lmtune.config import validate_config
from lmtune.errors import ConfigError
from lmtune.proxy import proxy_config

SPACE = {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}, "warmup_ratio": {"low": 0.0, "high": 0.2},
         "lr_scheduler_type": ["linear", "cosine", "constant"]}


def _slices(values: list[float], low: float, high: float, log: bool, n: int) -> list[int]:
    f = (lambda v: math.log(v)) if log else (lambda v: v)
    return sorted(int((f(v) - f(low)) / (f(high) - f(low)) * n) for v in values)


def _first(strategy: str, n: int, seed: int, startup: str = "lhs", **kw) -> list[dict]:
    study = Study("s", "memory://", space=SPACE, strategy=strategy, metric="v", direction="minimize", seed=seed,
                  startup=startup, **kw)
    study.optimize(lambda ctx: {"v": ctx.params["warmup_ratio"]}, n_trials=n)
    return [t.params for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.mark.parametrize("strategy", ["tpe", "gp", "random"])
@pytest.mark.parametrize("n", [3, 4])
def test_the_first_n_trials_take_one_nth_of_every_dimension_each(strategy, n):
    """With a study of n sampled trials and 5 startup trials, the design has n points, so none is left empty."""
    for seed in range(5):
        first = _first(strategy, n, seed, n_startup_trials=5, sampled_trials=n)
        assert _slices([p["learning_rate"] for p in first], 1e-4, 3e-2, True, n) == list(range(n))
        assert _slices([p["warmup_ratio"] for p in first], 0.0, 0.2, False, n) == list(range(n))
    thirds = _first(strategy, 3, 0, n_startup_trials=3)
    assert sorted(p["lr_scheduler_type"] for p in thirds) == ["constant", "cosine", "linear"]


def test_uniform_startup_draws_leave_slices_empty():
    """The case the design is for: independent draws often miss a third of the range (so the test above can
    fail)."""
    missed = sum(_slices([p["learning_rate"] for p in _first("tpe", 3, seed, startup="random")], 1e-4, 3e-2, True,
                         3) != [0, 1, 2] for seed in range(5))
    assert missed > 0


def test_the_baseline_does_not_use_up_a_point():
    study = Study("s", "memory://", space=SPACE, strategy="tpe", metric="v", direction="minimize", seed=0,
                  n_startup_trials=4, startup="lhs",
                  baseline={"learning_rate": 1e-3, "warmup_ratio": 0.1, "lr_scheduler_type": "linear"})
    study.optimize(lambda ctx: {"v": ctx.params["warmup_ratio"]}, n_trials=5)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert trials[0].params["learning_rate"] == 1e-3  # the baseline, trial 0
    assert _slices([t.params["learning_rate"] for t in trials[1:]], 1e-4, 3e-2, True, 4) == [0, 1, 2, 3]


def test_lhs_startup_is_refused_where_the_first_draws_are_not_uniform(tmp_path):
    from conftest import small_config

    with pytest.raises(ConfigError, match="search.startup: lhs replaces"):
        validate_config(small_config(tmp_path, search={"strategy": "auto", "startup": "lhs"}))
    with pytest.raises(ConfigError, match="search.startup lhs needs strategy"):
        Study("s", "memory://", space=SPACE, strategy="nsga2", startup="lhs")


def test_a_ladders_rungs_draw_their_startup_from_a_latin_hypercube_unless_told(tmp_path):
    from conftest import small_config

    ladder = {"proxies": [{"model": {"num_hidden_layers": 1}, "n_trials": 3},
                          {"model": {"num_hidden_layers": 2}, "n_trials": 2}]}
    cfg = validate_config(small_config(tmp_path, stages=ladder))
    assert proxy_config(cfg, tmp_path, 10, cfg.stages.proxies[0]).search.startup == "lhs"
    told = validate_config(small_config(tmp_path, stages=ladder, search={"startup": "random"}))
    assert proxy_config(told, tmp_path, 10, told.stages.proxies[0]).search.startup == "random"
    one = validate_config(small_config(tmp_path, stages={"proxy": {"model": {"num_hidden_layers": 1}}}))
    assert proxy_config(one, tmp_path, 10).search.startup == "random"  # one proxy searches like the target
