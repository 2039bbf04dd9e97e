"""One trial: sampled params -> training config -> a real fine-tuning run -> metrics and cost in storage."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from lmtune.config import ExperimentConfig, TrainConfig
from lmtune.study import TrialContext
from lmtune.train.model import check_model, load_tokenizer
from lmtune.train.trainer import PreparedData, Trainer, TrainResult


def trial_train_config(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The baseline training arguments with the trial's parameters applied, validated together."""
    try:
        return TrainConfig.model_validate({**base.model_dump(), **params})
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"invalid combination of parameters {params}: {'.'.join(map(str, err['loc']))}: "
                         f"{err['msg']}") from None


def cost_of(result: TrainResult) -> dict[str, float]:
    """Cost in optimizer steps, tokens, seconds and full-training equivalents (share of its full-length run)."""
    return {"steps": result.steps, "planned_steps": result.planned_steps, "tokens": result.tokens,
            "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
            "fte": result.steps / max(result.planned_steps, 1)}


class FineTuneObjective:
    """Trains one configuration per call. Tokenizer and encoded data are built once per process."""

    def __init__(self, cfg: ExperimentConfig, progress: Callable[[int, int, float], None] | None = None):
        self.cfg = cfg
        self.progress = progress
        self._tokenizer: Any = None
        self._prepared: PreparedData | None = None

    def prepare(self) -> tuple[Any, PreparedData]:
        """Load the tokenizer, check the model config loads, and encode the data (once)."""
        if self._prepared is None:
            check_model(self.cfg.model)
            self._tokenizer = load_tokenizer(self.cfg.model)
            self._prepared = PreparedData.build(self.cfg.data, self._tokenizer)
        return self._tokenizer, self._prepared

    def __call__(self, ctx: TrialContext) -> dict[str, float]:
        cfg = self.cfg
        train_cfg = trial_train_config(cfg.train, ctx.params)
        ctx.set("hparams", json.loads(train_cfg.model_dump_json()))
        tokenizer, prepared = self.prepare()
        trainer = Trainer(cfg.model, cfg.data, train_cfg, objective_metric=cfg.objective.metric,
                          maximize=cfg.objective.direction == "maximize", prepared=prepared, tokenizer=tokenizer,
                          report=ctx.report, progress=self.progress).setup()
        result = trainer.train()
        ctx.set("cost", cost_of(result))
        if result.stop_reason:
            ctx.set("stop_reason", result.stop_reason)
        if train_cfg.output_dir:
            trainer.save(train_cfg.output_dir, result)
        return {k: v for k, v in result.metrics.items() if k != "step"}
