from pathlib import Path

import pytest

from lmtune.config import load_config, validate_config
from lmtune.errors import ConfigError

ROOT = Path(__file__).parent.parent


def test_examples_validate():
    for path in (ROOT / "examples").glob("*.yaml"):
        cfg = load_config(path)
        assert (cfg.search.n_trials or cfg.search.strategy == "pbt") and cfg.objective.direction in (
            "maximize", "minimize")


def test_defaults_follow_hf_training_arguments():
    cfg = validate_config({})
    assert cfg.train.learning_rate == 5e-5 and cfg.train.lr_scheduler_type == "linear"
    assert cfg.objective.direction == "maximize"  # exact_match
    assert validate_config({"objective": {"metric": "eval_loss"}}).objective.direction == "minimize"


def test_shorthand_parameter_forms():
    space = validate_config({"search": {"space": {
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "per_device_train_batch_size": {"low": 8, "high": 32, "step": 8},
        "optim": ["adamw", "sgd"],
        "warmup_ratio": 0.1,
    }}}).search.space
    assert [space[k].type for k in space] == ["float", "int", "categorical", "fixed"]


@pytest.mark.parametrize(("cfg", "needles"), [
    ({"trian": {}}, ["trian: unknown key", "did you mean 'train'"]),
    ({"train": {"learnig_rate": 1}}, ["train.learnig_rate", "did you mean 'learning_rate'"]),
    ({"train": {"optim": "adam"}}, ["train.optim", "'adam'"]),
    ({"train": {"bf16": True, "fp16": True}}, ["choose one"]),
    ({"train": {"lr_scheduler_type": "warmup_stable_decay", "warmup_ratio": 0.5, "lr_decay_ratio": 0.6}},
     ["no room for its stable phase", "lower one"]),
    ({"search": {"space": {"learnin_rate": {"low": 1e-4, "high": 1e-2}}}}, ["did you mean 'learning_rate'"]),
    ({"search": {"space": {"learning_rate": {"low": 1e-2, "high": 1e-4}}}}, ["greater than high", "swap"]),
    ({"search": {"space": {"learning_rate": {"low": 0.0, "high": 1e-2, "log": True}}}}, ["log scale needs low > 0"]),
    ({"search": {"space": {"optim": []}}}, ["non-empty list of choices"]),
    ({"search": {"space": {"optim": ["adamw", "lion"]}}}, ["search.space.optim", "'lion' is not allowed"]),
    ({"search": {"space": {"learning_rate": {"low": -1.0, "high": 1.0}}}}, ["-1.0 is not allowed"]),
    ({"search": {"space": {"momentum": {"low": 0.8, "high": 0.9, "condition": {"optim": "sgd"}}}}},
     ["condition refers to 'optim'"]),
    ({"search": {"space": {"optim": ["adamw"], "momentum": {"low": 0.8, "high": 0.9, "condition": {"optim": "sgd"}}}}},
     ["can never happen"]),
    ({"search": {"strategy": "grid", "space": {"warmup_ratio": {"low": 0.0, "high": 0.2}}}}, ["grid search needs"]),
    ({"search": {"strategy": "bohbx"}}, ["search.strategy"]),
    ({"objective": {"metric": "accuracy"}}, ["unknown metric 'accuracy'"]),
    ({"storage": "lmtune.db"}, ["not a database URL"]),
    ({"data": {"prompt_template": "no placeholder"}}, ["{prompt}"]),
    ({"data": {"builtin": {"tasks": ["reverse", "poetry"]}}}, ["unknown task 'poetry'"]),
    ([1, 2], ["top level must be a mapping"]),
])
def test_invalid_configs_name_the_field_and_the_fix(cfg, needles):
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    for needle in needles:
        assert needle in str(e.value)


def test_malformed_yaml_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  learning_rate: 1e-3\n  optim: [adamw\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad.yaml at line \d+"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "exp.yaml"
    f.write_text("data:\n  path: data/train.jsonl\nmodel:\n  name_or_path: ./my-model\n")
    cfg = load_config(f)
    assert cfg.data.path == str(tmp_path / "sub" / "data" / "train.jsonl")
    assert cfg.model.name_or_path == str(tmp_path / "sub" / "my-model")
    assert load_config_hub(tmp_path) == "org/model"


def load_config_hub(tmp_path: Path) -> str:
    f = tmp_path / "hub.yaml"
    f.write_text("model:\n  name_or_path: org/model\n")
    return load_config(f).model.name_or_path
