"""Search-space presets for LLM fine-tuning, as starting points that a config overrides field by field.

Ranges follow published practice for real (pretrained, >=100M-parameter) models: full fine-tuning learning
rates around 1e-5..1e-4 (Alpaca, Tulu), LoRA around 1e-4..1e-3 with r 8..64 and alpha 16..64 (Hu et al. 2021,
QLoRA). The built-in tiny models train from a random init and need about 10x larger learning rates, which the
quickstart measurements (BENCHMARKS.md) confirm, so their presets are scaled up.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "learning_rate": {"low": 1e-5, "high": 1e-4, "log": True},
        "warmup_ratio": {"low": 0.0, "high": 0.1},
        "weight_decay": {"low": 0.0, "high": 0.1},
        "lr_scheduler_type": ["linear", "cosine"],
        "num_train_epochs": [1, 2, 3],
    },
    "lora": {
        "use_lora": True,
        "learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
        "lora_r": [8, 16, 32, 64],
        "lora_alpha": [16, 32, 64],
        "lora_dropout": {"low": 0.0, "high": 0.1},
        "warmup_ratio": {"low": 0.0, "high": 0.1},
        "lr_scheduler_type": ["linear", "cosine"],
    },
}

# Random-init tiny models: learning rates x ~30, and steps instead of epochs.
BUILTIN_OVERRIDES: dict[str, dict[str, Any]] = {
    "full": {"learning_rate": {"low": 3e-4, "high": 1e-2, "log": True}, "num_train_epochs": None,
             "per_device_train_batch_size": [16, 32, 48]},
    "lora": {"learning_rate": {"low": 1e-3, "high": 3e-2, "log": True}, "lora_r": [4, 8, 16],
             "lora_alpha": [8, 16, 32]},
}


# The built-in models trained from a random init; builtin:smollm2-135m-instruct is pretrained and takes the
# published ranges.
RANDOM_INIT_BUILTINS = ("builtin:tiny", "builtin:micro")


def preset_space(name: str, model_name: str) -> dict[str, Any]:
    """The preset's space for this model: published ranges, or scaled ones for the built-in tiny models."""
    space = dict(PRESETS[name])
    if model_name in RANDOM_INIT_BUILTINS:
        space.update(BUILTIN_OVERRIDES[name])
    return {k: v for k, v in space.items() if v is not None}


def apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Raw config dict with `search.preset` expanded: the config's own `search.space` entries win, and an
    entry set to null removes that preset dimension."""
    search = data.get("search")
    if not isinstance(search, dict) or search.get("preset") is None:
        return data
    name = search["preset"]
    if name not in PRESETS:
        return data  # the schema reports the unknown name
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    user = search.get("space") or {}
    merged = {**preset_space(name, str(model.get("name_or_path", "builtin:tiny"))), **user}
    return {**data, "search": {**search, "space": {k: v for k, v in merged.items() if v is not None}}}
