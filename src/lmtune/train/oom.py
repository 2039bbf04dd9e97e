"""Out of memory is a batch size, not a verdict: train again with half the micro-batch and twice the accumulation.

The same effective batch means the retry tunes the same hyperparameters in less memory. Nothing here knows of
Optuna: trials and the selection phase both train through `train_fitting_memory`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from lmtune.config import TrainConfig
from lmtune.errors import DivergedError, OutOfMemoryError
from lmtune.train.trainer import Trainer, TrainResult


def train_fitting_memory(train_cfg: TrainConfig, retries: int, make_trainer: Callable[[TrainConfig], Trainer],
                         on_oom: Callable[[list[dict[str, Any]]], None] = lambda _: None) -> Trainer:
    """Set up and train a trainer; when it runs out of memory, train again from scratch with half the
    micro-batch and twice the accumulation, up to `retries` times, then raise OutOfMemoryError ("oom: ...").
    `on_oom` sees the failed attempts so far. Any other error, a diverged loss included, goes up at once."""
    attempts: list[dict[str, Any]] = []
    spent = TrainResult(metrics={})  # what the attempts that ran out of memory trained
    while True:
        trainer = make_trainer(train_cfg)
        started = time.perf_counter()
        try:
            trainer.setup().train()
            return trainer
        except DivergedError as e:
            e.result = trainer.result
            raise
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            error = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        spent.wall_seconds += time.perf_counter() - started  # device time, counted by budget.device_hours
        done = getattr(trainer, "result", None)  # None: out of memory before the first step (loading)
        if done is not None:
            spent.planned_steps = done.planned_steps
            for key in ("steps", "tokens", "flops", "train_seconds"):
                setattr(spent, key, getattr(spent, key) + getattr(done, key))
        del trainer, done
        free_memory()
        attempts.append({"per_device_train_batch_size": train_cfg.per_device_train_batch_size,
                         "gradient_accumulation_steps": train_cfg.gradient_accumulation_steps, "error": error})
        on_oom(attempts)
        if len(attempts) > retries or train_cfg.per_device_train_batch_size == 1:
            err = OutOfMemoryError(
                f"oom: out of memory at per_device_train_batch_size={train_cfg.per_device_train_batch_size} "
                f"after {len(attempts) - 1} retries with half the micro-batch ({error}); lower "
                "per_device_train_batch_size or data.max_length, or raise search.oom_retries")
            err.result = spent
            raise err
        train_cfg = halve_micro_batch(train_cfg)


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, the "out of memory" RuntimeErrors of other backends, and CPU allocator
    failures ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(e, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def halve_micro_batch(cfg: TrainConfig) -> TrainConfig:
    """Half the micro-batch, twice the accumulation: the same effective batch (exactly so for an even
    micro-batch), so the retry tunes the same hyperparameters in less memory. The evaluation batch is halved
    too: an evaluation can be what ran out of memory."""
    return cfg.model_copy(update={"per_device_train_batch_size": cfg.per_device_train_batch_size // 2,
                                  "gradient_accumulation_steps": cfg.gradient_accumulation_steps * 2,
                                  "per_device_eval_batch_size": max(1, cfg.per_device_eval_batch_size // 2)})


def free_memory() -> None:
    """Return the failed attempt's tensors before the retry allocates its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
