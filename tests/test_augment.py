"""Data augmentation as a hyperparameter: paraphrases keep answers, only training rows grow, user plug-ins."""

import random

import pytest
import yaml
from conftest import small_config

from lmtune import tune
from lmtune.builtin.tasks import generate
from lmtune.config import load_config, validate_config
from lmtune.errors import ConfigError, DataError
from lmtune.train.augment import paraphrase
from lmtune.train.trainer import Trainer


def test_paraphrase_rewords_instructions_and_keeps_inputs_and_answers():
    rows = generate(60, seed=0)
    out = [paraphrase(dict(r), random.Random(i)) for i, r in enumerate(rows)]
    assert [(o["input"], o["output"], o["task"]) for o in out] == [(r["input"], r["output"], r["task"]) for r in rows]
    changed = sum(o["instruction"] != r["instruction"] for o, r in zip(out, rows, strict=True))
    assert changed > 40  # most rows get a new wording...
    assert len({o["instruction"] for o in out if o["task"] == "add"}) > 3  # ...and many different ones
    assert out == [paraphrase(dict(r), random.Random(i)) for i, r in enumerate(rows)]  # seeded: reproducible
    chat = {"messages": [{"role": "user", "content": "12+30"}, {"role": "assistant", "content": "42"}]}
    para = paraphrase(chat, random.Random(1))["messages"]
    assert para[0]["content"].endswith("\n12+30") and para[1] == chat["messages"][1]


def _trainer(tmp_path, **train):
    cfg = validate_config(small_config(tmp_path, train={"max_steps": 2, **train}))
    return Trainer(cfg.model, cfg.data, cfg.train).setup()


def test_augmentation_adds_training_rows_only(tmp_path):
    plain, aug = _trainer(tmp_path), _trainer(tmp_path, augmentation_ratio=0.5)
    n = len(plain.train_data)
    assert len(aug.train_data) == n + round(0.5 * 300)
    assert aug.train_data[:n] == plain.train_data
    # Same seed, same initial weights: validation and test are untouched, so their scores are identical.
    assert aug.evaluate()["eval_loss"] == plain.evaluate()["eval_loss"]
    assert aug.evaluate("test") == plain.evaluate("test")
    decoded = [aug.tokenizer.decode(e.input_ids) for e in aug.train_data[n:]]
    originals = {aug.tokenizer.decode(e.input_ids) for e in plain.train_data}
    assert sum(d not in originals for d in decoded) > 100  # reworded, not duplicated
    # The answers are the source rows' answers (built-in rows carry their task; answers end each row).
    answers = {e.answer for e in plain.prepared.train}
    assert all(e.answer in answers for e in aug.train_data[n:])


def test_user_augmentation_function_from_a_file_relative_to_the_config(tmp_path):
    (tmp_path / "aug.py").write_text(
        "def shout(row, rng):\n"
        "    return {**row, 'instruction': row['instruction'].upper() + '!' * rng.randint(1, 3)}\n")
    raw = small_config(tmp_path, train={"augmentation": "aug.py:shout", "augmentation_ratio": 1.0},
                       search={"strategy": "grid", "n_trials": 2, "space": {"augmentation_ratio": [0.0, 1.0]}})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "exp.yaml")
    assert cfg.train.augmentation == f"{tmp_path / 'aug.py'}:shout"
    t = Trainer(cfg.model, cfg.data, cfg.train).setup()
    added = [t.tokenizer.decode(e.input_ids) for e in t.train_data[len(t.prepared.train):]]
    assert len(added) == 300 and all(any(w.isupper() and len(w) > 2 for w in a.split()) for a in added)
    study = tune(cfg)  # the ratio is a searchable dimension like any other
    ratios = sorted(t.user_attrs["hparams"]["augmentation_ratio"] for t in study.trials if t.state.name == "COMPLETE")
    assert ratios == [0.0, 1.0]


def test_bad_augmentation_input_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="train.augmentation"):
        validate_config(small_config(tmp_path, train={"augmentation": "not a function"}))
    with pytest.raises(ConfigError, match="cannot load"):
        _trainer(tmp_path, augmentation=f"{tmp_path}/missing.py:f", augmentation_ratio=0.5)
    (tmp_path / "broken.py").write_text("def f(row, rng):\n    return {'instruction': 'x'}\n")
    with pytest.raises(DataError, match=r"augmentation .*broken.py:f.* missing field 'output'"):
        _trainer(tmp_path, augmentation=f"{tmp_path}/broken.py:f", augmentation_ratio=0.5)
