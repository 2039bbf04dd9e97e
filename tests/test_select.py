"""The selection phase and the baseline-vs-tuned table, on real tiny studies."""

import csv

import pytest
from conftest import small_config

from lmtune import tune
from lmtune.config import validate_config
from lmtune.results import compare, write_comparison
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
