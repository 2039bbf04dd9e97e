"""Warm-start from past studies: read-only, not counted as own trials, and informative for the first proposals."""

import math

import optuna
import pytest

from lmtune import Study
from lmtune.config import validate_config
from lmtune.errors import ConfigError
from lmtune.strategies._warm_start import WarmStartSampler

SPACE = {"x": {"low": 0.0, "high": 1.0}, "lr": {"low": 1e-5, "high": 1e-1, "log": True}}


def _objective(ctx):
    return {"v": -((ctx.params["x"] - 0.8) ** 2) - (math.log10(ctx.params["lr"]) + 2) ** 2 / 9}


@pytest.mark.parametrize("strategy", ["tpe", "auto"])
def test_warm_start_reads_another_storage_read_only_and_guides_the_first_proposals(tmp_path, strategy):
    past_url = f"sqlite:///{tmp_path / 'past.db'}"
    past = Study("past", past_url, space=SPACE, strategy="random", metric="v", seed=3)
    past.optimize(_objective, n_trials=40)
    before = [(t.number, t.params, t.value) for t in past.trials]

    def first_proposals(warm: list) -> list[dict]:
        study = Study(f"new-{len(warm)}", f"sqlite:///{tmp_path / 'new.db'}", space=SPACE, strategy=strategy,
                      metric="v", seed=0, n_startup_trials=5, warm_start=warm)
        study.optimize(_objective, n_trials=8)
        assert len(study.trials) == 8  # past trials are not trials of this study
        return [t.params for t in sorted(study.trials, key=lambda t: t.number)]

    warm = first_proposals([{"study": "past", "storage": past_url}])
    cold = first_proposals([])
    after = optuna.load_study(study_name="past", storage=past_url)
    assert [(t.number, t.params, t.value) for t in after.trials] == before  # the source is untouched
    # Cold, the first 5 are random; warm, the model has 40 observations from the start.
    dist = [abs(p["x"] - 0.8) + abs(math.log10(p["lr"]) + 2) / 4 for p in warm[:5]]
    cold_dist = [abs(p["x"] - 0.8) + abs(math.log10(p["lr"]) + 2) / 4 for p in cold[:5]]
    assert sum(dist) < 0.6 * sum(cold_dist)


def test_warm_start_on_the_same_storage_and_a_missing_source(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    Study("old", url, space=SPACE, strategy="random", metric="v").optimize(_objective, n_trials=10)
    study = Study("new", url, space=SPACE, strategy="tpe", metric="v", warm_start=["old"])
    study.optimize(_objective, n_trials=3)
    assert len(study.trials) == 3
    with pytest.raises(ConfigError):  # before any trial, and without creating the missing file
        Study("new2", url, space=SPACE, strategy="tpe", metric="v",
              warm_start=[{"study": "old", "storage": f"sqlite:///{tmp_path / 'nope.db'}"}])
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(ConfigError, match="no study 'gone'"):
        Study("new3", url, space=SPACE, strategy="tpe", metric="v", warm_start=[{"study": "gone", "storage": url}])


def test_warm_start_in_the_config():
    cfg = validate_config({"search": {"strategy": "auto", "warm_start": ["a", {"study": "b", "storage": "sqlite:///x.db"}],
                                      "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}})
    assert cfg.search.warm_start[0] == "a" and cfg.search.warm_start[1].storage == "sqlite:///x.db"
    with pytest.raises(Exception, match="warm_start"):
        validate_config({"search": {"strategy": "asha", "warm_start": ["a"]}})


def test_a_capped_source_shows_trials_spread_from_its_worst_to_its_best(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    Study("old", url, space=SPACE, strategy="random", metric="v", seed=1).optimize(_objective, n_trials=30)
    seen: list[list[float]] = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, param_name, param_distribution):
            seen.append(sorted(t.value for t in study.get_trials(deepcopy=False) if t.number < 0))
            return super().sample_independent(study, trial, param_name, param_distribution)

    sampler = WarmStartSampler(Spy(seed=0), [(None, "old")], per_source=5)
    new = optuna.create_study(study_name="new", storage=url, sampler=sampler, direction="maximize")
    new.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    assert seen[0] == []  # the first trial has declared no parameter yet
    # 5 of the 30 past trials (values as quantiles within their study), both ends and three between.
    assert len(seen[1]) == 5 and seen[1][0] == 0.0 and seen[1][-1] == 1.0
    assert all(0.15 < b - a < 0.35 for a, b in zip(seen[1], seen[1][1:], strict=False))
