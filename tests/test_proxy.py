"""Proxy tuning: stage 1 on a shrunk model, data and run; stage 2 re-runs the transferred top-k on the target."""

import os

import pytest
import torch
from conftest import small_config
from transformers import AutoModelForCausalLM

from lmtune import tune
from lmtune.config import ParamSpec, TransferConfig, validate_config
from lmtune.errors import ConfigError
from lmtune.proxy import narrowed_space, proxy_config, transfer
from lmtune.results import load_study, ranked_trials
from lmtune.train.model import resolve_path


def test_transfer_rules():
    params = {"learning_rate": 4e-3, "weight_decay": 0.05, "max_steps": 50}
    moved, extra = transfer(params, TransferConfig(learning_rate="width", batch_size="data"), width_ratio=0.5,
                            data_ratio=3.0, steps_ratio=2.0, base_accumulation=2)
    assert moved == {"learning_rate": 2e-3, "weight_decay": 0.05, "max_steps": 100}
    assert extra == {"gradient_accumulation_steps": 6}  # effective batch x3, micro-batch (memory) unchanged
    moved, extra = transfer({"learning_rate": 4e-3, "gradient_accumulation_steps": 2},
                            TransferConfig(learning_rate=0.25, batch_size="none"), 0.5, 3.0, 1.0, 1)
    assert moved == {"learning_rate": 1e-3, "gradient_accumulation_steps": 2} and extra == {}
    assert transfer(params, TransferConfig(learning_rate="none"), 0.5, 1.0, 1.0, 1)[0]["learning_rate"] == 4e-3
    assert transfer({"num_train_epochs": 1.5}, TransferConfig(), 1.0, 1.0, 2.0, 1)[0] == {"num_train_epochs": 3.0}


def test_a_searched_run_length_is_shortened_on_the_proxy(tmp_path):
    cfg = validate_config(small_config(tmp_path, train={"max_steps": 200}, search={"space": {
        "max_steps": {"low": 100, "high": 300, "step": 50}, "num_train_epochs": [1.0, 2.0],
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
        stages={"proxy": {"steps_fraction": 0.5}}))
    space = proxy_config(cfg, tmp_path / "proxy-model", n_train=100).search.space
    assert (space["max_steps"].low, space["max_steps"].high, space["max_steps"].step) == (50, 150, 25)
    assert space["num_train_epochs"].choices == [0.5, 1.0]
    assert space["learning_rate"] == cfg.search.space["learning_rate"]
    epochs = {"num_train_epochs": {"low": 1, "high": 5}}  # whole epochs: an int range becomes a float one
    cfg = validate_config(small_config(tmp_path, train={"max_steps": -1, "num_train_epochs": 2.0},
                                       search={"space": epochs}, stages={"proxy": {"steps_fraction": 0.5}}))
    spec = proxy_config(cfg, tmp_path / "proxy-model", n_train=100).search.space["num_train_epochs"]
    assert (spec.type, spec.low, spec.high) == ("float", 0.5, 2.5)


def test_narrowed_space_centres_on_the_transferred_config():
    space = {"learning_rate": ParamSpec(type="float", low=1e-4, high=1e-1, log=True),
             "warmup_ratio": ParamSpec(type="float", low=0.0, high=0.2),
             "optim": ParamSpec(type="categorical", choices=["adamw", "sgd"])}
    out = narrowed_space(space, {"learning_rate": 2e-3, "warmup_ratio": 0.01, "optim": "sgd"}, factor=2.0)
    assert (out["learning_rate"].low, out["learning_rate"].high) == pytest.approx((1e-3, 4e-3))
    assert (out["warmup_ratio"].low, out["warmup_ratio"].high) == pytest.approx((0.0, 0.06))
    assert out["optim"] == space["optim"]
    # Linear bounds stay inside the declared range, so every sampled value is a valid training argument.
    bounded = {"momentum": ParamSpec(type="float", low=0.8, high=0.99),
               "gradient_accumulation_steps": ParamSpec(type="int", low=1, high=8)}
    out = narrowed_space(bounded, {"momentum": 0.98, "gradient_accumulation_steps": 1}, factor=2.0)
    assert (out["momentum"].low, out["momentum"].high) == pytest.approx((0.9325, 0.99))
    assert (out["gradient_accumulation_steps"].low, out["gradient_accumulation_steps"].high) == (1, 3)
    # A transferred value outside the declared range is still reached.
    out = narrowed_space(bounded, {"momentum": 0.9, "gradient_accumulation_steps": 12}, factor=2.0)
    assert (out["gradient_accumulation_steps"].low, out["gradient_accumulation_steps"].high) == (10, 12)


@pytest.mark.parametrize("workers", [None, 2], ids=["in-process", "2-workers"])
def test_proxy_then_target_end_to_end(tmp_path, workers):
    cfg = small_config(
        tmp_path, executor={"workers": workers, "heartbeat_interval": 1, "grace_period": 10},
        train={"max_steps": 12, "eval_steps": 6},
        search={"strategy": "random", "n_trials": 3, "seed": 0,
                "space": {"learning_rate": {"low": 1e-3, "high": 3e-2, "log": True}}},
        stages={"proxy": {"model": {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 96,
                                    "num_attention_heads": 1},
                          "data_fraction": 0.5, "steps_fraction": 0.5},
                "transfer": {"top_k": 2, "learning_rate": "width", "batch_size": "data",
                             "local_search": {"n_trials": 1, "factor": 2.0}}},
        select={"top_k": 1, "seeds": [0]})
    study = tune(cfg)
    proxy = load_study(cfg["storage"], "test-proxy")
    assert len(proxy.trials) == 3
    for t in proxy.trials:
        assert t.user_attrs["cost"]["planned_steps"] == 6  # half the steps...
    proxy_dir = tmp_path / "runs" / "test"
    built = [p for p in proxy_dir.iterdir() if p.name.startswith("proxy-model")]
    assert len(built) == 1 and AutoModelForCausalLM.from_pretrained(built[0]).config.hidden_size == 32
    # Stage 2: the baseline, the 2 transferred configs, 1 local-search trial; the selection ran on the target.
    trials = study.trials
    assert len(trials) == 4 and sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    assert trials[0].user_attrs.get("baseline")  # trial 0, as in any study, before the transferred configs
    moved = [t for t in trials if "transferred_from" in t.user_attrs]
    assert len(moved) == 2
    for t in moved:
        source = proxy.trials[t.user_attrs["transferred_from"]]
        assert t.params["learning_rate"] == pytest.approx(source.params["learning_rate"] * 32 / 64)  # width rule
        assert t.user_attrs["hparams"]["gradient_accumulation_steps"] == 2  # data rule: 2x the rows
        assert t.user_attrs["cost"]["planned_steps"] == 12
    best_moved = max(moved, key=lambda t: -t.user_attrs["proxy_value"])  # eval_loss: lowest proxy loss first
    local = next(t for t in trials if not t.user_attrs.get("baseline") and "transferred_from" not in t.user_attrs)
    lr0 = best_moved.params["learning_rate"]
    assert lr0 / 2 <= local.params["learning_rate"] <= lr0 * 2
    info = study.optuna.user_attrs["stages"]
    assert info["proxy_study"] == "test-proxy" and info["width_ratio"] == 0.5 and info["data_ratio"] == 2.0
    assert 0 < info["proxy_fte_target"] < 3 * 0.5  # 3 proxy runs cost far less than 3 target runs
    assert study.optuna.user_attrs["selection"]["candidates"]
    if workers:  # both stages ran in the worker processes, none in this one
        ran_in = {t.user_attrs.get("worker") for t in [*proxy.trials, *trials]}
        assert None not in ran_in and str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in ran_in}
    # Resuming does nothing more in either stage.
    again = tune(cfg)
    assert len(again.trials) == 4 and len(load_study(cfg["storage"], "test-proxy").trials) == 3


@pytest.mark.parametrize(("how", "kept"), [("spread", 1), ("first", 0)])
def test_layer_dropped_proxy_keeps_the_targets_weights(tmp_path, how, kept):
    from lmtune.proxy import build_proxy_model

    cfg = validate_config(small_config(tmp_path, stages={"proxy": {"model": {"num_hidden_layers": 1,
                                                                             "layers": how}}}))
    proxy = AutoModelForCausalLM.from_pretrained(build_proxy_model(cfg))
    target = AutoModelForCausalLM.from_pretrained(resolve_path(cfg.model))
    assert proxy.config.num_hidden_layers == 1 and target.config.num_hidden_layers == 2
    t_state = target.state_dict()
    for name, tensor in proxy.state_dict().items():
        assert torch.equal(tensor, t_state[name.replace(".layers.0.", f".layers.{kept}.")]), name


def test_kept_layers_spread_from_the_first_to_the_last():
    from lmtune.proxy import kept_layers

    assert kept_layers(30, 4) == [0, 10, 19, 29]
    assert kept_layers(30, 2) == [0, 29] and kept_layers(30, 1) == [29]
    assert kept_layers(30, 4, "first") == [0, 1, 2, 3]
    assert kept_layers(4, 9) == [0, 1, 2, 3]  # more than the target has: all of them


def test_stages_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="population-based training"):
        validate_config(small_config(tmp_path, search={"strategy": "pbt"}, stages={}))
    with pytest.raises(ConfigError, match="stages.proxy.data_fraction"):
        validate_config(small_config(tmp_path, stages={"proxy": {"data_fraction": 0}}))
    with pytest.raises(ConfigError, match="a name of its own"):
        validate_config(small_config(tmp_path, stages={"proxy": {"study_name": "test"}}))
    with pytest.raises(ConfigError, match="stages.transfer.learning_rate"):
        validate_config(small_config(tmp_path, stages={"transfer": {"learning_rate": "depth"}}))


def _ladder_config(tmp_path, study_name="test", **transfer):
    return small_config(
        tmp_path, study_name=study_name, train={"max_steps": 12, "eval_steps": 6},
        search={"strategy": "random", "n_trials": 3, "seed": 0,
                "space": {"learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
                          "gradient_accumulation_steps": {"low": 1, "high": 3}}},
        stages={"proxies": [
            {"model": {"hidden_size": 16, "intermediate_size": 48}, "steps_fraction": 0.5, "n_trials": 5,
             "study_name": "ladder-1"},
            {"model": {"hidden_size": 32, "intermediate_size": 96}, "steps_fraction": 0.5, "n_trials": 4,
             "study_name": "ladder-2", "narrow": 3.0}],
            "transfer": {"top_k": 2, "learning_rate": "fit", "batch_size": "fit", **transfer}})


def test_a_ladder_resumes_its_interrupted_second_rung_then_fits_and_transfers(tmp_path):
    from lmtune.report import build_report
    from lmtune.results import transfer_fit_lines

    cfg = _ladder_config(tmp_path)

    def interrupt_rung_2(study, trial):
        if study.study_name == "ladder-2":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(cfg, callbacks=[interrupt_rung_2])
    rung1 = load_study(cfg["storage"], "ladder-1")
    first = [(t.number, t.value, t.datetime_complete) for t in rung1.trials]
    assert len(first) == 5 and len(load_study(cfg["storage"], "ladder-2").trials) == 1
    study = tune(cfg)
    # The first rung was kept as it was; the second went on to its 4 trials; then the target ran.
    assert [(t.number, t.value, t.datetime_complete) for t in load_study(cfg["storage"], "ladder-1").trials] == first
    rung2 = load_study(cfg["storage"], "ladder-2")
    assert sum(t.state.name == "COMPLETE" for t in rung2.trials) == 4
    # narrow: rung 2 searched within 3x of rung 1's best learning rate moved by the width rule (16/32).
    best1 = next(t for t in ranked_trials(rung1) if not t.user_attrs.get("baseline"))
    centre = best1.params["learning_rate"] * 0.5
    for t in rung2.trials:
        if not t.user_attrs.get("baseline"):
            assert centre / 3 * 0.999 <= t.params["learning_rate"] <= centre * 3 * 1.001
    fit = study.optuna.user_attrs["transfer_fit"]
    assert [s["study"] for s in fit["stages"]] == ["ladder-1", "ladder-2"]
    assert fit["stages"][0]["n_params"] < fit["stages"][1]["n_params"] < fit["target"]["n_params"]
    moved = sorted((t for t in study.trials if "transferred_from" in t.user_attrs), key=lambda t: t.number)
    assert len(moved) == 2 and study.trials[0].user_attrs.get("baseline")
    lr = fit["prediction"]["learning_rate"]
    if lr["used"]:  # the best of rung 2 starts from the prediction itself
        assert moved[0].params["learning_rate"] == pytest.approx(lr["value"])
    else:
        assert lr["fallback"]
    info = study.optuna.user_attrs["stages"]
    assert [r["study"] for r in info["rungs"]] == ["ladder-1", "ladder-2"] and info["proxy_trials"] == 9
    lines = transfer_fit_lines(study.optuna)
    assert len(lines) == 2 and lines[0].startswith("learning_rate")
    html = build_report(study, tmp_path / "report.html").read_text()
    assert "Scaling-law transfer" in html and 'id="plot-transfer-fit"' in html
    # Resuming does nothing more anywhere.
    tune(cfg)
    assert len(load_study(cfg["storage"], "test").trials) == len(study.trials)
    assert len(load_study(cfg["storage"], "ladder-2").trials) == len(rung2.trials)


def test_a_fit_too_uncertain_to_use_falls_back_to_the_fixed_rules_and_says_so(tmp_path):
    cfg = _ladder_config(tmp_path, "guarded", max_uncertainty=1.0001)
    study = tune(cfg)
    pred = study.optuna.user_attrs["transfer_fit"]["prediction"]
    for name in ("learning_rate", "batch_size"):
        assert not pred[name]["used"] and pred[name]["fallback"], pred
    best2 = next(t for t in ranked_trials(load_study(cfg["storage"], "ladder-2"))
                 if not t.user_attrs.get("baseline"))
    first = min((t for t in study.trials if "transferred_from" in t.user_attrs), key=lambda t: t.number)
    assert first.user_attrs["transferred_from"] == best2.number
    assert first.params["learning_rate"] == pytest.approx(best2.params["learning_rate"] * 32 / 64)  # width
    assert first.params["gradient_accumulation_steps"] == best2.params["gradient_accumulation_steps"]  # none


def test_ladder_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="fit needs a ladder"):
        validate_config(small_config(tmp_path, stages={"transfer": {"learning_rate": "fit"}}))
    rung = {"n_trials": 2}
    with pytest.raises(ConfigError, match="stages.proxies"):
        validate_config(small_config(tmp_path, stages={"proxies": [rung]}))  # one rung is no ladder
    with pytest.raises(ConfigError, match="either proxy"):
        validate_config(small_config(tmp_path, stages={"proxy": rung, "proxies": [rung, rung]}))
    with pytest.raises(ConfigError, match="first rung"):
        validate_config(small_config(tmp_path, stages={"proxies": [{"narrow": 2.0}, rung]}))
    with pytest.raises(ConfigError, match="gradient_accumulation_steps or per_device_train_batch_size"):
        validate_config(small_config(tmp_path, stages={"proxies": [rung, rung],
                                                       "transfer": {"batch_size": "fit"}}))
    names = validate_config(small_config(tmp_path, stages={"proxies": [rung, rung]})).stages.rungs("test")
    assert [n for n, _ in names] == ["test-proxy-1", "test-proxy-2"]


def test_a_last_rung_worse_than_a_smaller_one_is_not_carried():
    from types import SimpleNamespace

    import optuna

    from lmtune.proxy import Scale, _carried

    def rung(name, values, n_params, direction="minimize"):
        study = optuna.create_study(study_name=name, direction=direction)
        dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
        for v in values:
            study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-3}, distributions=dist, value=v))
        return None, SimpleNamespace(optuna=study, name=name), Scale(n_params, 16, 100, 0.4, 0.4)

    # The larger rung found a lower loss: it is carried, as the ladder is consistent.
    assert _carried([rung("a", [2.6, 2.4], 1e4), rung("b", [2.5, 2.2], 5e4), rung("c", [2.3, 2.1], 2e5)]) == (2, "")
    # Its best is worse than both smaller rungs': the best of them is carried, and the reason names both.
    index, why = _carried([rung("a", [2.6, 2.3], 1e4), rung("b", [2.5, 2.1], 5e4), rung("c", [2.4, 2.35], 2e5)])
    assert index == 1 and "last rung (c)" in why and "smaller rung b" in why
    # Maximised objectives compare the other way.
    assert _carried([rung("a", [0.5], 1e4, "maximize"), rung("b", [0.6], 5e4, "maximize")]) == (1, "")
    assert _carried([rung("a", [0.7], 1e4, "maximize"), rung("b", [0.6], 5e4, "maximize")])[0] == 0
    # A rung at a larger scale than the last is no evidence against it.
    assert _carried([rung("a", [2.0], 1e6), rung("b", [2.2], 5e4)]) == (1, "")
