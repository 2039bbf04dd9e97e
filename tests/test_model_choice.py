"""auto's model: Optuna's GP while a numeric, unconditional study is small, TPE after and otherwise."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from lmtune.space import SearchSpace
from lmtune.strategies import create_sampler
from lmtune.strategies._lc_sampler import CurveSampler
from lmtune.strategies._model_choice import ModelChoice, gp_fits

NUMERIC = {"x": {"low": 0.0, "high": 1.0}, "n": {"low": 1, "high": 8}, "warmup_ratio": 0.1}


@pytest.mark.parametrize(("extra", "fits"), [
    ({}, True), ({"optim": ["adamw", "sgd"]}, False), ({"lora_r": {"low": 4, "high": 16, "values": [4, 8, 16]}}, False),
    ({"optim": ["adamw", "sgd"], "momentum": {"low": 0.5, "high": 0.99, "condition": {"optim": "sgd"}}}, False)])
def test_the_gp_is_chosen_only_for_numeric_unconditional_spaces(extra: dict[str, Any], fits: bool) -> None:
    space = SearchSpace(NUMERIC | extra)
    assert gp_fits(space) == fits
    curves = create_sampler("auto", space, seed=0)
    assert isinstance(curves, CurveSampler)
    assert isinstance(curves.inner, ModelChoice) == fits
    if not fits:
        assert isinstance(curves.inner, optuna.samplers.TPESampler)


def test_auto_proposes_with_the_gp_until_the_study_is_large_then_with_tpe() -> None:
    curves = create_sampler("auto", SearchSpace(NUMERIC), seed=0, n_startup_trials=2)
    choice = curves.inner  # type: ignore[attr-defined]
    assert isinstance(choice, ModelChoice) and isinstance(choice.gp, optuna.samplers.GPSampler)
    choice.max_gp_trials = 6
    proposed: dict[int, tuple[str, bool]] = {}  # trial -> (model, whether it proposed, not its startup draw)
    for name in ("gp", "tpe"):
        model = getattr(choice, name)

        def spy(study: Any, trial: Any, space: Any, original: Any = model.sample_relative, name: str = name) -> Any:
            params = original(study, trial, space)
            proposed[trial.number] = (name, bool(params))
            return params

        model.sample_relative = spy
    study = optuna.create_study(sampler=curves)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1) - 0.3) ** 2 + t.suggest_int("n", 1, 8) / 10, n_trials=10)
    assert [proposed[n][0] for n in range(10)] == ["gp"] * 6 + ["tpe"] * 4
    assert [proposed[n][1] for n in range(2, 10)] == [True] * 8  # both model the study after 2 startup trials
    assert not choice._gp_trials  # nothing kept per finished trial
