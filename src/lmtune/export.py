"""Tuned hyperparameters in the forms users take elsewhere: lmtune YAML, or HF `TrainingArguments` JSON.

A practitioner who tuned with lmtune often trains the final model with the HF `Trainer`, so the export must load
as `TrainingArguments(**json.load(f))` as is. What `TrainingArguments` has no field for (LoRA shape, model dropout,
early stopping, lmtune-only knobs) goes to a second file, arranged by the HF object that takes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import yaml

from lmtune.config import TrainConfig
from lmtune.records import StudyRecord
from lmtune.results import best_config

# Same name and meaning in lmtune's TrainConfig and HF TrainingArguments.
_SAME = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
         "num_train_epochs", "max_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
         "max_grad_norm", "bf16", "fp16", "label_smoothing_factor", "seed", "eval_steps")
_OPTIM = {"adamw": "adamw_torch", "sgd": "sgd", "rmsprop": "rmsprop", "adafactor": "adafactor"}
_LORA = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
         "lora_target_modules": "target_modules"}


def training_arguments(train: TrainConfig, output_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kwargs for `transformers.TrainingArguments`, everything else grouped by the HF object that takes it)."""
    args: dict[str, Any] = {"output_dir": output_dir}
    args.update({k: getattr(train, k) for k in _SAME if getattr(train, k) is not None})
    if train.eval_steps is not None:
        args["eval_strategy"] = "steps"
    # transformers 5 folds warmup_ratio into warmup_steps: a value below 1 is a fraction of training.
    args["warmup_steps"] = train.warmup_ratio
    args["optim"] = _OPTIM[train.optim]
    if train.optim in ("sgd", "rmsprop"):
        args["optim_args"] = f"momentum={train.momentum}" + (
            f",eps={train.adam_epsilon}" if train.optim == "rmsprop" else "")
    extra: dict[str, Any] = {}
    if train.optim == "adafactor":
        # torch's Adafactor (what lmtune trains with) scales each step by the parameter's RMS; HF's
        # optim="adafactor" turns that off, so the tuned learning rate would mean another step size there.
        extra["optimizer"] = {
            "class": "torch.optim.Adafactor",
            "kwargs": {"lr": train.learning_rate, "weight_decay": train.weight_decay},
            "use": "Trainer(..., optimizer_cls_and_kwargs=(torch.optim.Adafactor, kwargs)): HF's "
                   "optim='adafactor' takes an unscaled step, so the tuned learning_rate does not carry over to it"}
    if train.lr_scheduler_type == "step":
        extra["no_hf_equivalent"] = {"lr_scheduler_type": "step", "lr_step_gamma": train.lr_step_gamma,
                                     "lr_step_milestones": train.lr_step_milestones}
        args["lr_scheduler_type"] = "constant" if not train.warmup_ratio else "constant_with_warmup"
    else:
        args["lr_scheduler_type"] = train.lr_scheduler_type
    if train.lr_scheduler_type == "warmup_stable_decay":  # HF takes the decay in steps, lmtune as a share
        if train.max_steps > 0:
            args["lr_scheduler_kwargs"] = {"num_decay_steps": int(round(train.lr_decay_ratio * train.max_steps))}
        else:
            extra["lr_scheduler_kwargs"] = {
                "num_decay_steps": f"{train.lr_decay_ratio} x the run's optimizer steps (lr_decay_ratio)"}
    if train.use_lora:
        extra["peft_lora_config"] = {"task_type": "CAUSAL_LM",
                                     **{hf: getattr(train, ours) for ours, hf in _LORA.items()}}
    if train.dropout:
        extra["model_config"] = {"dropout (every *dropout* field of the model config)": train.dropout}
    if train.early_stopping_patience is not None:
        extra["early_stopping_callback"] = {"early_stopping_patience": train.early_stopping_patience,
                                            "early_stopping_threshold": train.early_stopping_threshold}
    lmtune_only = {k: getattr(train, k) for k in ("layerwise_lr_decay", "augmentation", "augmentation_ratio")
                   if getattr(train, k) != TrainConfig.model_fields[k].default}
    if lmtune_only:
        extra.setdefault("no_hf_equivalent", {}).update(lmtune_only)
    return args, extra


def export(study: optuna.Study, fmt: str, output: Path) -> list[Path]:
    """Write the tuned configuration (the selection phase's winner when it ran) and return the files written."""
    cfg = best_config(study)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "yaml":
        output.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return [output]
    train = TrainConfig.model_validate(cfg["train"])
    model_dir = StudyRecord(study).best_model.get("dir")
    args, extra = training_arguments(train, train.output_dir or f"{cfg.get('study_name', 'lmtune')}-final")
    output.write_text(json.dumps(args, indent=2) + "\n")
    written = [output]
    if model_dir:
        extra["tuned_model_dir"] = model_dir
    if extra:
        side = output.with_name(f"{output.stem}.extra.json")
        side.write_text(json.dumps(extra, indent=2) + "\n")
        written.append(side)
    return written
