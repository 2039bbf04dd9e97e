"""The export to HF TrainingArguments: every training argument lands where the HF Trainer takes it."""

import importlib

import torch
from transformers import TrainingArguments

from lmtune.config import TrainConfig
from lmtune.export import training_arguments


def test_adafactor_exports_the_optimizer_lmtune_trained_with():
    args, extra = training_arguments(TrainConfig(optim="adafactor", learning_rate=3e-3, weight_decay=0.01), "out")
    TrainingArguments(**args)
    spec = extra["optimizer"]
    module, name = spec["class"].rsplit(".", 1)
    optimizer = getattr(importlib.import_module(module), name)(torch.nn.Linear(2, 2).parameters(), **spec["kwargs"])
    assert isinstance(optimizer, torch.optim.Adafactor)
    assert optimizer.defaults["lr"] == 3e-3 and optimizer.defaults["weight_decay"] == 0.01
    assert "optimizer" not in training_arguments(TrainConfig(optim="adamw"), "out")[1]


def test_warmup_stable_decay_exports_its_decay_in_steps():
    wsd = {"lr_scheduler_type": "warmup_stable_decay", "lr_decay_ratio": 0.2, "warmup_ratio": 0.1}
    args, _ = training_arguments(TrainConfig(max_steps=50, **wsd), "out")
    assert TrainingArguments(**args).lr_scheduler_kwargs == {"num_decay_steps": 10}
    args, extra = training_arguments(TrainConfig(**wsd), "out")  # epochs: the steps are the run's to count
    TrainingArguments(**args)
    assert "lr_decay_ratio" in extra["lr_scheduler_kwargs"]["num_decay_steps"]
