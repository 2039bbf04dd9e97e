import optuna
import pytest

from lmtune.space import SearchSpace
from lmtune.strategies import create_sampler

SPACE = {
    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "optim": ["adamw", "sgd"],
    "momentum": {"low": 0.5, "high": 0.99, "condition": {"optim": "sgd"}},
    "per_device_train_batch_size": {"low": 8, "high": 32, "step": 8},
    "warmup_ratio": 0.1,
}


def sample(space: SearchSpace, strategy: str, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=create_sampler(strategy, space, seed, n_startup_trials=3))
    out = []

    def objective(trial):
        p = space.suggest(trial)
        out.append(p)
        return p["learning_rate"]

    study.optimize(objective, n_trials=n)
    return out


@pytest.mark.parametrize("strategy", ["random", "tpe", "gp"])
def test_samples_respect_bounds_and_conditions(strategy):
    space = SearchSpace(SPACE)
    for p in sample(space, strategy, 8):
        assert 1e-4 <= p["learning_rate"] <= 1e-2
        assert p["per_device_train_batch_size"] in (8, 16, 24, 32)
        assert p["warmup_ratio"] == 0.1
        assert ("momentum" in p) == (p["optim"] == "sgd")
        if "momentum" in p:
            assert 0.5 <= p["momentum"] <= 0.99


@pytest.mark.parametrize("strategy", ["random", "tpe", "gp"])
def test_same_seed_same_samples(strategy):
    space = SearchSpace(SPACE)
    assert sample(space, strategy, 6, seed=7) == sample(space, strategy, 6, seed=7)
    assert sample(space, strategy, 6, seed=7) != sample(space, strategy, 6, seed=8)


def test_grid_enumerates_every_point_once():
    space = SearchSpace({"learning_rate": {"low": 1e-4, "high": 1e-2, "values": [1e-4, 1e-3, 1e-2]},
                         "optim": ["adamw", "sgd"], "warmup_ratio": 0.0})
    assert space.grid_size() == 6
    seen = sample(space, "grid", 6)
    assert sorted((p["learning_rate"], p["optim"]) for p in seen) == sorted(
        (lr, o) for lr in (1e-4, 1e-3, 1e-2) for o in ("adamw", "sgd"))


def test_baseline_values_outside_the_space_are_not_enqueued():
    space = SearchSpace(SPACE)
    base = {"learning_rate": 5e-5, "optim": "adamw", "momentum": 0.9, "per_device_train_batch_size": 12,
            "warmup_ratio": 0.0}
    # 5e-5 is below the range, 12 is off the step grid, momentum is inactive for adamw.
    assert space.clip_to_space(base) == {"optim": "adamw"}
    study = optuna.create_study()
    study.enqueue_trial(space.clip_to_space(base))
    trial = study.ask()
    params = space.suggest(trial, baseline=base)
    # The baseline trial trains with the baseline's own values, fixed ones included.
    assert params == {"learning_rate": 5e-5, "optim": "adamw", "per_device_train_batch_size": 12,
                      "warmup_ratio": 0.0}
    assert trial.params == {"optim": "adamw"}
