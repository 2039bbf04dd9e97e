"""Shared fixtures: a private LMTUNE_HOME for the built-in model, and small configs that train in seconds."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

# The built-in model is materialised once per test session, not in the user's cache.
os.environ.setdefault("LMTUNE_HOME", tempfile.mkdtemp(prefix="lmtune-test-home-"))
# Nothing in the tests may reach the network: a hub id fails at once instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def small_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A study config on the 2-layer built-in model and 300 synthetic rows: a trial takes about a second."""
    cfg: dict[str, Any] = {
        "study_name": "test",
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name_or_path": "builtin:micro"},
        "data": {"builtin": {"n_train": 300, "n_validation": 40, "n_test": 40}},
        "train": {"learning_rate": 3e-3, "per_device_train_batch_size": 16, "max_steps": 12, "eval_steps": 6,
                  "eval_max_samples": 24},
        "search": {"strategy": "random", "n_trials": 3, "seed": 0,
                   "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
        "objective": {"metric": "eval_loss"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return small_config(tmp_path)
