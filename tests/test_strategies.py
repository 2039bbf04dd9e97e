"""Pruning, budgets, presets and population-based training on real (tiny) studies."""

import json
import random

import pytest
import torch
from conftest import small_config
from optuna.trial import TrialState
from transformers import AutoModelForCausalLM

from lmtune import Study, tune
from lmtune.config import validate_config
from lmtune.results import study_cost
from lmtune.space import SearchSpace
from lmtune.strategies import PopulationBasedTraining, resolve
from lmtune.study import open_tuning_study


def test_combined_strategies():
    assert resolve("auto", None) == ("auto", "extrapolate")
    assert resolve("bohb", None) == ("tpe", "hyperband")
    assert resolve("asha", None) == ("random", "asha")
    assert resolve("tpe", "median") == ("tpe", "median")
    assert resolve("auto", "none") == ("auto", "none")


def test_asha_prunes_real_trials_and_pruned_trials_cost_less(tmp_path):
    cfg = small_config(tmp_path, search={
        "strategy": "asha", "n_trials": 8, "seed": 1, "min_resource": 4, "reduction_factor": 2,
        "space": {"learning_rate": {"low": 1e-5, "high": 3e-2, "log": True}}},
        train={"max_steps": 16, "eval_steps": 4, "eval_max_samples": 8})
    trials = tune(cfg).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete
    assert trials[0].state == TrialState.COMPLETE  # the baseline is never pruned
    assert max(t.user_attrs["cost"]["steps"] for t in pruned) < min(t.user_attrs["cost"]["steps"] for t in complete)
    for t in pruned:  # a pruned trial keeps its learning curve and its cost
        assert t.user_attrs["stop_reason"] == "pruned" and t.user_attrs["cost"]["fte"] < 1
        assert [c["step"] for c in t.user_attrs["curve"]] == sorted(t.intermediate_values)
    assert study_cost(trials)["fte"] < len(trials)


def test_fte_budget_stops_the_study(tmp_path):
    def objective(trial):
        trial.set("cost", {"fte": 0.5, "wall_seconds": 1.0})
        return trial.params["x"]

    study = Study("b", f"sqlite:///{tmp_path / 'b.db'}", space={"x": {"low": 0.0, "high": 1.0}}, strategy="random")
    study.optimize(objective, budget_fte=2.0)
    assert len(study.trials) == 4 and study_cost(study.trials)["fte"] == 2.0
    study.optimize(objective, budget_fte=2.0)  # resumed with the budget spent: nothing runs
    assert len(study.trials) == 4
    study.optimize(objective, budget_device_hours=7 / 3600)
    assert len(study.trials) == 7


def test_budget_from_the_config(tmp_path):
    cfg = small_config(tmp_path, search={"strategy": "random", "n_trials": 50, "budget": {"fte": 2.0},
                                         "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}})
    assert len(tune(cfg).trials) == 2


def test_presets_are_overridden_field_by_field():
    cfg = validate_config({"model": {"name_or_path": "org/model"},
                           "search": {"preset": "lora", "space": {"lora_r": [4, 8], "lora_dropout": None}}})
    space = cfg.search.space
    assert space["learning_rate"].low == 1e-4 and space["learning_rate"].high == 1e-3 and space["learning_rate"].log
    assert space["lora_r"].choices == [4, 8] and "lora_dropout" not in space and space["use_lora"].value is True
    tiny = validate_config({"search": {"preset": "full"}}).search.space
    assert tiny["learning_rate"].low > 1e-4 and "num_train_epochs" not in tiny  # scaled for the built-in model
    full = validate_config({"model": {"name_or_path": "org/model"}, "search": {"preset": "full"}}).search.space
    assert full["learning_rate"].high == 1e-4 and full["num_train_epochs"].choices == [1, 2, 3]


def test_pbt_explore_perturbs_within_bounds_and_keeps_fixed_structure():
    space = SearchSpace({"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                         "per_device_train_batch_size": [8, 16], "label_smoothing_factor": [0.0, 0.1]})
    pbt = PopulationBasedTraining(space, mutable=("learning_rate", "label_smoothing_factor"),
                                  resample_probability=0.0, perturb_factors=[0.8, 1.2], seed=0)
    for _ in range(20):
        new = pbt.explore({"learning_rate": 1e-3, "per_device_train_batch_size": 16, "label_smoothing_factor": 0.1})
        assert new["learning_rate"] in (pytest.approx(8e-4), pytest.approx(1.2e-3))
        assert new["per_device_train_batch_size"] == 16 and new["label_smoothing_factor"] == 0.1
    assert pbt.explore({"learning_rate": 1e-2})["learning_rate"] <= 1e-2  # clipped to the space
    pbt.resample_probability, pbt.rng = 1.0, random.Random(3)
    seen = {pbt.explore({"label_smoothing_factor": 0.1})["label_smoothing_factor"] for _ in range(20)}
    assert seen == {0.0, 0.1}


def test_pbt_exploit_copies_real_weights_and_records_the_schedule(tmp_path):
    ckpt_dir = tmp_path / "pbt"
    cfg = small_config(tmp_path, search={
        "strategy": "pbt", "seed": 0,
        "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}, "weight_decay": {"low": 0.0, "high": 0.1}},
        "pbt": {"population_size": 4, "segment_steps": 8, "quantile": 0.25, "checkpoint_dir": str(ckpt_dir)}},
        train={"max_steps": 24, "eval_steps": 8})
    study = tune(cfg)
    trials = study.trials
    assert trials[0].user_attrs["baseline"] is True and "pbt_member" not in trials[0].user_attrs
    members = [t for t in trials if "pbt_member" in t.user_attrs]
    assert len(members) == 4 and all(t.state == TrialState.COMPLETE for t in members)
    exploits = [e for t in members for e in t.user_attrs.get("lineage", [])]
    assert len(exploits) == 2  # one receiver per exploit round, two rounds (after steps 8 and 16)
    for e in exploits:
        # Evaluated right after copying, the receiver scores what the donor scored: the weights really moved.
        assert e["score_after_copy"] == pytest.approx(e["donor_score"], rel=1e-5)
        assert e["replaced_score"] >= e["donor_score"]  # eval_loss: the worse member was replaced
    for t in members:
        schedule = t.user_attrs["schedule"]
        assert schedule[0]["step"] == 0 and len(schedule) == 1 + len(t.user_attrs.get("lineage", []))
        assert t.user_attrs["cost"]["steps"] == 24 and sorted(t.intermediate_values) == [8, 16, 24]
    receiver = next(t for t in members if t.user_attrs.get("lineage"))
    assert receiver.user_attrs["schedule"][-1]["learning_rate"] != receiver.user_attrs["schedule"][0]["learning_rate"]
    # Checkpoints are gone; the best member's model is kept and loads with from_pretrained.
    assert not ckpt_dir.exists()  # every checkpoint and the folder itself
    info = study.optuna.user_attrs["pbt"]
    model = AutoModelForCausalLM.from_pretrained(info["best_model_dir"])
    assert isinstance(model, torch.nn.Module)
    assert info["best_model_dir"] == str((tmp_path / "runs" / "test" / "best-model").resolve())
    saved = json.loads((tmp_path / "runs" / "test" / "best-model" / "pbt_schedule.json").read_text())
    assert saved["schedule"] == trials[info["best_trial"]].user_attrs["schedule"]
    assert len(tune(cfg).trials) == len(trials)  # a finished population is not run again


@pytest.mark.parametrize("killed_in", ["population", "baseline"])
def test_pbt_after_an_interrupted_run_trains_a_new_population_and_keeps_a_better_baseline(tmp_path, killed_in):
    """A run killed mid-population leaves RUNNING members: the next run fails them and trains a new population;
    one killed in the baseline leaves it RUNNING: the next run fails it and trains it again. The members
    (learning rates far too small) lose to the baseline, whose model stays the kept one."""
    cfg = small_config(tmp_path, search={
        "strategy": "pbt", "seed": 0, "space": {"learning_rate": {"low": 1e-7, "high": 2e-7, "log": True}},
        "pbt": {"population_size": 2, "segment_steps": 6}})
    killed = open_tuning_study(validate_config(cfg))
    if killed_in == "baseline":
        killed.enqueue_baseline()
        killed.optuna.ask()  # the baseline, running when its process died
    else:
        killed.optuna.ask().set_user_attr("pbt_member", 0)
    study = tune(cfg)
    assert study.optuna.trials[0].state == TrialState.FAIL
    assert study.optuna.trials[0].user_attrs["fail_reason"].startswith("interrupted")
    members = [t for t in study.trials if "pbt_member" in t.user_attrs and t.number > 0]
    assert len(members) == 2 and all(t.state == TrialState.COMPLETE for t in members)
    base = study.baseline_trial
    assert base.state == TrialState.COMPLETE and base.number == 1  # the one run after the kill
    assert all(t.value > base.value for t in members)  # eval_loss: the baseline is better
    assert study.optuna.user_attrs["best_model"]["trial"] == base.number
    assert "best_model_dir" not in study.optuna.user_attrs["pbt"]
    assert not (tmp_path / "runs" / "test" / "best-model" / "pbt_schedule.json").exists()
    assert len(tune(cfg).trials) == len(study.trials)  # the finished population is not run again


def test_pbt_in_two_worker_processes_matches_one_process(tmp_path):
    def run(workers: int) -> list[float]:
        d = tmp_path / f"w{workers}"
        cfg = small_config(d, search={
            "strategy": "pbt", "seed": 0, "baseline": False,
            "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}},
            "pbt": {"population_size": 4, "segment_steps": 6, "workers": workers, "checkpoint_dir": str(d / "pbt")}},
            train={"max_steps": 12, "eval_steps": 6})
        return [t.value for t in tune(cfg).trials]

    one, two = run(1), run(2)
    assert len(one) == 4 and two == pytest.approx(one, rel=1e-5)


def test_pbt_member_that_diverges_is_pruned_and_the_population_goes_on(tmp_path):
    cfg = small_config(tmp_path, search={
        "strategy": "pbt", "seed": 0, "baseline": False,
        "space": {"learning_rate": [3e-3, 1e6], "weight_decay": {"low": 0.0, "high": 0.1}},
        "pbt": {"population_size": 4, "segment_steps": 6, "resample_probability": 0.0,
                "checkpoint_dir": str(tmp_path / "pbt")}},
        train={"optim": "sgd", "momentum": 0.0, "max_grad_norm": 0.0, "max_steps": 12, "eval_steps": 6})
    study = tune(cfg)
    diverged = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(diverged) + len(complete) == 4 and diverged and complete
    for t in diverged:
        assert t.params["learning_rate"] == 1e6 and t.user_attrs["stop_reason"] == "diverged"
        assert t.user_attrs["prune_reason"].startswith("diverged:") and 1 <= t.user_attrs["cost"]["steps"] <= 6
    for t in complete:  # the rest trained to the end, exploiting only each other
        assert t.user_attrs["cost"]["steps"] == 12 and t.user_attrs["schedule"][-1]["learning_rate"] == 3e-3
    assert study.optuna.user_attrs["pbt"]["best_trial"] in {t.number for t in complete}


def test_every_strategy_name_the_config_accepts_has_a_sampler_and_a_pruner() -> None:
    from typing import get_args

    from lmtune.config import CombinedName, StrategyName
    from lmtune.space import SearchSpace
    from lmtune.strategies import COMBINED, create_pruner, create_sampler, resolve

    assert set(COMBINED) == set(get_args(CombinedName))
    space = SearchSpace({"x": {"low": 1, "high": 3}})
    for name in get_args(StrategyName):
        sampler, pruner = resolve(name, None)
        assert create_sampler(sampler, space) is not None and create_pruner(pruner) is not None
