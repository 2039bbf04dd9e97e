"""The selection phase and the baseline-vs-tuned table, on real tiny studies."""

import csv
import json

import optuna
import pytest
import yaml
from conftest import small_config
from peft import AutoPeftModelForCausalLM, LoraConfig
from transformers import TrainingArguments
from typer.testing import CliRunner

from lmtune import tune
from lmtune.cli import app
from lmtune.config import load_config, validate_config
from lmtune.errors import LmtuneError
from lmtune.results import compare, load_study, selection_cost, write_comparison
from lmtune.select import _decide, run_selection
from lmtune.train.trainer import Trainer


def test_selection_retrains_top_configs_with_seeds_on_test(tmp_path):
    cfg = small_config(tmp_path, select={"top_k": 1, "seeds": [0, 1], "rule": "mean"},
                       search={"strategy": "random", "n_trials": 3, "seed": 0,
                               "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}}})
    study = tune(cfg)
    sel = study.optuna.user_attrs["selection"]
    rows = sel["candidates"]
    # 2 configs (the baseline and the search's best) x 2 seeds, each scored on the held-out test split.
    assert len(rows) == 2 and rows[0]["baseline"] and not rows[1]["baseline"]
    assert rows[1]["trial"] == study.best_trial.number
    for r in rows:
        assert sorted(r["per_seed"]) == ["0", "1"]
        tests = [s["test"]["eval_loss"] for s in r["per_seed"].values()]
        assert len(set(tests)) == 2  # different seeds really trained differently
        assert r["test_mean"] == pytest.approx(sum(tests) / 2)
        assert {"exact_match", "token_f1", "perplexity"} <= set(r["per_seed"]["0"]["test"])
    assert sel["winner"] in (rows[0]["trial"], rows[1]["trial"])
    assert sel["winner"] == min(rows, key=lambda r: r["test_mean"])["trial"]  # eval_loss: lower wins
    assert all(isinstance(f, str) for f in sel["flags"])
    assert selection_cost(study.optuna) == pytest.approx(
        {"runs": 4, "steps": 48, "fte": 4.0, "wall_seconds": sum(
            s["cost"]["wall_seconds"] for r in rows for s in r["per_seed"].values())})
    # The winner's model is the kept one, and it reproduces its seed-0 validation loss.
    kept = study.optuna.user_attrs["best_model"]
    assert kept["trial"] == sel["winner"] and kept["selected"]
    c = validate_config(small_config(tmp_path, model={"name_or_path": kept["dir"]}))
    loss = Trainer(c.model, c.data, c.train).setup().evaluate()["eval_loss"]
    winner = next(r for r in rows if r["trial"] == sel["winner"])
    assert loss == pytest.approx(winner["per_seed"]["0"]["validation"]["eval_loss"], rel=1e-5)
    # A resumed run with nothing new does not retrain.
    before = study.optuna.user_attrs["selection"]
    assert tune(cfg).optuna.user_attrs["selection"] == before


def test_a_candidate_that_diverges_on_one_seed_is_left_out_not_fatal(tmp_path, monkeypatch):
    """Seed 1 of the lr 1e-2 config blows up (NaN loss): the selection goes on, records why, picks among the
    configs that trained on every seed, and a resumed run does not retrain."""
    step = Trainer._optimizer_step

    def nan_for_seed_1(self, micro_batches):
        loss, tokens, scored = step(self, micro_batches)
        return (float("nan") if self.cfg.seed == 1 and self.cfg.learning_rate == 1e-2 else loss), tokens, scored

    monkeypatch.setattr(Trainer, "_optimizer_step", nan_for_seed_1)
    cfg = small_config(tmp_path, select={"top_k": 1, "seeds": [0, 1]}, train={"learning_rate": 1e-3},
                       search={"strategy": "grid", "n_trials": 2,
                               "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "values": [1e-2]}}})
    study = tune(cfg)
    sel = study.optuna.user_attrs["selection"]
    tuned = next(t for t in study.trials if not t.user_attrs.get("baseline"))
    assert [f["trial"] for f in sel["failed"]] == [tuned.number]
    failed = sel["failed"][0]
    assert list(failed["errors"]) == ["1"] and failed["errors"]["1"].startswith("diverged: training loss is nan")
    assert list(failed["per_seed"]) == ["0"]  # the seed that trained is kept
    assert [r["trial"] for r in sel["candidates"]] == [study.trials[0].number] == [sel["winner"]]
    assert any(f"trial {tuned.number} left out" in f for f in sel["flags"])
    assert sel["search_winner"] == tuned.number  # the search's best, though it failed a seed
    assert any(f"the search winner (trial {tuned.number}) is not the robust winner" in f for f in sel["flags"])
    assert tune(cfg).optuna.user_attrs["selection"] == sel

    monkeypatch.setattr(Trainer, "_optimizer_step", lambda self, mb: (float("nan"), 0, 0))
    with pytest.raises(LmtuneError, match="every candidate of the selection phase failed"):
        run_selection(validate_config({**cfg, "select": {"top_k": 1, "seeds": [2]}}), study.optuna)
    assert study.optuna.user_attrs["selection"] == sel  # the stored selection is not touched


def test_verdict_when_the_baseline_failed_in_selection_and_the_winner_is_worse_on_validation():
    """The robust winner can be worse on validation than a baseline that diverged on a test seed: the verdict
    says so, and why the baseline was not compared on test data."""
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("metric", "eval_loss")
    for value, attrs in ((1.0, {"baseline": True}), (1.2, {})):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={**attrs, "metrics": {"eval_loss": value}},
                                                  params={}, distributions={}))
    study.set_user_attr("selection", {
        "winner": 1, "candidates": [{"trial": 1, "test_mean": 1.3, "test_std": 0.1, "per_seed": {"0": {}}}],
        "failed": [{"trial": 0, "errors": {"1": "diverged: training loss is nan at step 3"}}]})
    comp = compare(study)
    assert not comp.improved
    assert comp.verdict.startswith("the tuned trial 1 does not beat the baseline on validation: eval_loss 1 -> 1.2")
    assert "the baseline was left out of the selection phase (diverged: training loss is nan" in comp.verdict


@pytest.mark.parametrize("seeds", [["0"], ["0", "1"]])
def test_overfitting_is_flagged_against_a_seed_spread_only(seeds):
    rows = [{"trial": 1, "baseline": False, "test_mean": 0.5, "test_std": 0.01, "gap": 0.1,
             "per_seed": dict.fromkeys(seeds, {})}]
    flags = _decide(rows, "exact_match", maximize=True, rule="mean", search_winner=1)["flags"]
    assert any("being overfitted" in f for f in flags) == (len(seeds) > 1)


def _judged_study(selection: dict) -> optuna.Study:
    """A baseline (trial 0) and a tuned trial (1) of a maximised metric, with a stored selection."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("metric", "exact_match")
    for value, attrs in ((0.7, {"baseline": True}), (0.75, {})):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={**attrs, "metrics": {
            "exact_match": value}}, params={}, distributions={}))
    study.set_user_attr("selection", {"winner": 1, "failed": [], **selection})
    return study


@pytest.mark.parametrize(("rule", "tuned_mean", "verdict"), [
    ("mean", 0.82, "tuned beats the baseline on test data: exact_match 0.8 -> 0.82 (+0.02)"),
    ("pessimistic", 0.78, "tuned does not beat the baseline's mean on test data: exact_match 0.8 -> 0.78 (-0.02), "
                          "trial 1; the pessimistic rule (mean one std towards worse) chose it for its smaller "
                          "seed spread (0.01 against 0.05)"),
    ("mean", 0.8, "tuned does not beat the baseline's mean on test data: exact_match 0.8 -> 0.8 (+0), trial 1")])
def test_test_verdict_follows_the_test_means(rule, tuned_mean, verdict):
    comp = compare(_judged_study({"rule": rule, "candidates": [
        {"trial": 0, "test_mean": 0.8, "test_std": 0.05, "per_seed": {"0": {}, "1": {}}},
        {"trial": 1, "test_mean": tuned_mean, "test_std": 0.01, "per_seed": {"0": {}, "1": {}}}]}))
    assert comp.verdict.startswith(verdict) and comp.improved == verdict.startswith("tuned beats")


def test_baseline_vs_tuned_table_files(tmp_path):
    cfg = small_config(tmp_path, select={"top_k": 1, "seeds": [0, 1]},
                       train={"learning_rate": 1e-5},
                       search={"strategy": "grid", "n_trials": 2,
                               "space": {"learning_rate": {"low": 1e-5, "high": 1e-2, "values": [1e-2]}}})
    comp = compare(tune(cfg).optuna)
    names = [r[0] for r in comp.rows]
    assert "learning_rate" in names and "validation eval_loss" in names and "test eval_loss (2 seeds)" in names
    assert "on test data" in comp.verdict
    md, csv_path = write_comparison(comp, tmp_path / "out" / "comparison")
    assert "| learning_rate | 1e-05 | 0.01 |" in md.read_text()
    with csv_path.open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["name", "baseline", "tuned"] and ["learning_rate", "1e-05", "0.01"] in table


def test_select_and_export_commands_on_a_lora_study(tmp_path, monkeypatch):
    """`lmtune run`, then `lmtune select` and `lmtune export` on its study; the kept adapter loads with peft."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    raw = small_config(tmp_path, train={"use_lora": True, "lora_r": 4, "lora_alpha": 8.0, "optim": "sgd",
                                        "lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 3e-2},
                       search={"strategy": "random", "n_trials": 2, "seed": 0,
                               "space": {"learning_rate": {"low": 1e-2, "high": 1e-1, "log": True}}})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["run", "exp.yaml", "--quiet"]).exit_code == 0
    res = runner.invoke(app, ["select", "exp.yaml", "--top-k", "1", "--seeds", "0,1"])
    assert res.exit_code == 0, res.output
    assert "selection: test eval_loss over seeds" in res.output and "*winner*" in res.output
    study = load_config("exp.yaml")
    st = load_study(study.storage, study.study_name)
    sel = st.user_attrs["selection"]
    assert len(sel["candidates"]) == 2 and all(sorted(r["per_seed"]) == ["0", "1"] for r in sel["candidates"])
    assert all("eval_loss" in s["test"] for r in sel["candidates"] for s in r["per_seed"].values())
    bad = runner.invoke(app, ["select", "exp.yaml", "--seeds", "0,0"])
    assert bad.exit_code == 2 and "(--top-k/--seeds/--rule)" in bad.output and "select.seeds" in bad.output

    assert runner.invoke(app, ["export", "exp.yaml", "--format", "yaml", "-o", "tuned.yaml"]).exit_code == 0
    winner = st.get_trials(deepcopy=False)[sel["winner"]].user_attrs["hparams"]
    assert load_config("tuned.yaml").train.learning_rate == winner["learning_rate"]
    res = runner.invoke(app, ["export", "exp.yaml", "--format", "trainingargs", "-o", "args.json"])
    assert res.exit_code == 0, res.output
    args = TrainingArguments(**json.loads((tmp_path / "args.json").read_text()))
    assert args.learning_rate == winner["learning_rate"] and args.max_steps == 12 and args.optim == "sgd"
    assert args.optim_args == "momentum=0.9"
    extra = json.loads((tmp_path / "args.extra.json").read_text())
    lora = LoraConfig(**extra["peft_lora_config"])
    assert lora.r == 4 and set(lora.target_modules) == {"q_proj", "v_proj"}

    # The kept adapter loads through peft on its base model and scores the validation loss that was stored.
    kept = st.user_attrs["best_model"]
    model = AutoPeftModelForCausalLM.from_pretrained(extra["tuned_model_dir"])
    assert extra["tuned_model_dir"] == kept["dir"]
    cfg = validate_config(raw)
    trainer = Trainer(cfg.model, cfg.data, cfg.train).setup()
    trainer.model = model
    assert trainer.evaluate()["eval_loss"] == pytest.approx(kept["metrics"]["eval_loss"], rel=1e-5)
