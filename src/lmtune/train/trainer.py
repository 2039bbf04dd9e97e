"""One fine-tuning run, read top to bottom: setup, train, evaluate, save.

Configuration comes in as plain data (`TrainConfig` and friends). The only link to a tuner is the
`report(step, metrics) -> bool` hook: it sees every evaluation and may ask the run to stop. Nothing here
imports Optuna.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import get_scheduler

from lmtune.config import DataConfig, ModelConfig, TrainConfig
from lmtune.errors import DivergedError, LmtuneError
from lmtune.train.data import IGNORE, Encoded, PromptRenderer, collate, collate_prompts, load_splits, pack
from lmtune.train.metrics import exact_match, perplexity, token_f1
from lmtune.train.model import count_parameters, load_model, load_tokenizer, parameter_groups

Report = Callable[[int, dict[str, float]], bool]
Progress = Callable[[int, int, float], None]


@dataclass
class PreparedData:
    """Encoded splits; built once per process and shared by every trial on the same tokenizer and data."""

    train: list[Encoded]
    validation: list[Encoded]
    test: list[Encoded]
    dropped: int = 0

    @classmethod
    def build(cls, data: DataConfig, tokenizer: Any) -> PreparedData:
        splits = load_splits(data)
        renderer = PromptRenderer(tokenizer, data.prompt_template, data.max_length)
        train, d1 = renderer.encode_all(splits.train)
        validation, d2 = renderer.encode_all(splits.validation)
        test, d3 = renderer.encode_all(splits.test)
        if not train or not validation:
            raise LmtuneError(f"no training or validation example fits data.max_length={data.max_length}; "
                              "raise data.max_length")
        if data.packing:
            train = pack(train, data.max_length)
        return cls(train, validation, test, d1 + d2 + d3)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    planned_steps: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    stop_reason: str | None = None  # "early_stopping" | "report" | None for a full run


class Trainer:
    def __init__(self, model: ModelConfig, data: DataConfig, train: TrainConfig, *,
                 objective_metric: str = "eval_loss", maximize: bool = False,
                 prepared: PreparedData | None = None, tokenizer: Any = None,
                 report: Report | None = None, progress: Progress | None = None):
        self.model_cfg, self.data_cfg, self.cfg = model, data, train
        self.objective_metric, self.maximize = objective_metric, maximize
        self.prepared, self.tokenizer = prepared, tokenizer
        self.report, self.progress = report, progress

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self) -> Trainer:
        cfg = self.cfg
        if cfg.torch_num_threads:
            torch.set_num_threads(cfg.torch_num_threads)
        torch.manual_seed(cfg.seed)
        self._setup_device()
        self.tokenizer = self.tokenizer or load_tokenizer(self.model_cfg)
        self.prepared = self.prepared or PreparedData.build(self.data_cfg, self.tokenizer)
        self._setup_model()
        self._setup_steps()
        self._setup_optimizer()
        self._setup_lr_scheduler()
        return self

    def _setup_device(self) -> None:
        cfg = self.cfg
        if cfg.device == "auto":
            name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        else:
            name = cfg.device
        self.device = torch.device(name)
        if cfg.fp16 and self.device.type != "cuda":
            raise LmtuneError(f"train.fp16 needs a CUDA device, this run is on {self.device.type}; use bf16")
        self.amp_dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None
        self.scaler = torch.amp.GradScaler("cuda") if cfg.fp16 else None

    def _setup_model(self) -> None:
        self.model = load_model(self.model_cfg, self.cfg).to(self.device)
        self.n_params, self.n_trainable = count_parameters(self.model)

    def _setup_steps(self) -> None:
        cfg = self.cfg
        micro_batches = math.ceil(len(self.prepared.train) / cfg.per_device_train_batch_size)
        self.steps_per_epoch = max(1, math.ceil(micro_batches / cfg.gradient_accumulation_steps))
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs *
                                                                             self.steps_per_epoch)
        self.eval_steps = cfg.eval_steps or max(1, math.ceil(self.total_steps / 4))

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        groups = parameter_groups(self.model, cfg)
        if cfg.optim == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                               eps=cfg.adam_epsilon)
        elif cfg.optim == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum)
        elif cfg.optim == "rmsprop":
            self.optimizer = torch.optim.RMSprop(groups, lr=cfg.learning_rate, momentum=cfg.momentum,
                                                 eps=cfg.adam_epsilon)
        else:
            self.optimizer = torch.optim.Adafactor(groups, lr=cfg.learning_rate)

    def _setup_lr_scheduler(self) -> None:
        cfg = self.cfg
        warmup = int(round(cfg.warmup_ratio * self.total_steps))
        if cfg.lr_scheduler_type == "step":
            milestones = [int(m * self.total_steps) for m in cfg.lr_step_milestones]

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                return cfg.lr_step_gamma ** sum(step >= m for m in milestones)

            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        else:
            self.scheduler = get_scheduler(cfg.lr_scheduler_type, self.optimizer, num_warmup_steps=warmup,
                                           num_training_steps=self.total_steps)

    # ------------------------------------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        cfg = self.cfg
        result = TrainResult(metrics={}, planned_steps=self.total_steps)
        start = time.perf_counter()
        batches = self._micro_batches()
        best, bad_evals = None, 0
        running_loss, running_n = 0.0, 0
        self.model.train()
        for step in range(1, self.total_steps + 1):
            t0 = time.perf_counter()
            loss, tokens = self._optimizer_step([next(batches) for _ in range(cfg.gradient_accumulation_steps)])
            if not math.isfinite(loss):
                raise DivergedError(f"diverged: training loss is {loss} at step {step}")
            result.train_seconds += time.perf_counter() - t0
            result.tokens += tokens
            result.steps = step
            running_loss, running_n = running_loss + loss, running_n + 1
            if self.progress:
                self.progress(step, self.total_steps, loss)
            if step % self.eval_steps and step != self.total_steps:
                continue
            metrics = self.evaluate()
            metrics.update(step=step, train_loss=running_loss / running_n, train_seconds=result.train_seconds,
                           tokens_per_second=result.tokens / max(result.train_seconds, 1e-9),
                           elapsed_seconds=time.perf_counter() - start)
            running_loss, running_n = 0.0, 0
            result.history.append(metrics)
            result.metrics = metrics
            stop = self.report(step, metrics) if self.report else False
            if step == self.total_steps:
                break
            if stop:
                result.stop_reason = "report"
                break
            value = metrics[self.objective_metric]
            improved = best is None or (value > best + cfg.early_stopping_threshold if self.maximize
                                        else value < best - cfg.early_stopping_threshold)
            best, bad_evals = (value, 0) if improved else (best, bad_evals + 1)
            if cfg.early_stopping_patience and bad_evals >= cfg.early_stopping_patience:
                result.stop_reason = "early_stopping"
                break
        result.wall_seconds = time.perf_counter() - start
        return result

    def _micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Endless shuffled micro-batches, reshuffled each epoch from the run's seed."""
        data, bs = self.prepared.train, self.cfg.per_device_train_batch_size
        gen = torch.Generator().manual_seed(self.cfg.seed)
        while True:
            order = torch.randperm(len(data), generator=gen).tolist()
            for i in range(0, len(order), bs):
                yield collate([data[j] for j in order[i:i + bs]], self.tokenizer.pad_token_id)

    def _optimizer_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
        """One update over the accumulated micro-batches; the loss is averaged over all their answer tokens."""
        cfg = self.cfg
        n_targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro_batches)
        total_loss, tokens = 0.0, 0
        for batch in micro_batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                loss_sum = self._loss_sum(batch, cfg.label_smoothing_factor)
            loss = loss_sum / max(n_targets, 1)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total_loss += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, tokens

    def _loss_sum(self, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="sum", label_smoothing=label_smoothing)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def evaluate(self, split: str = "validation") -> dict[str, float]:
        """Loss and perplexity on the whole split; exact match and token F1 of greedy answers on a sample."""
        examples = getattr(self.prepared, split)
        self.model.eval()
        bs = self.cfg.per_device_eval_batch_size
        loss_sum, n_targets = 0.0, 0
        for i in range(0, len(examples), bs):
            batch = collate(examples[i:i + bs], self.tokenizer.pad_token_id)
            n_targets += int((batch["labels"][:, 1:] != IGNORE).sum())
            with self._autocast():
                loss_sum += float(self._loss_sum({k: v.to(self.device) for k, v in batch.items()}))
        eval_loss = loss_sum / max(n_targets, 1)
        metrics = {"eval_loss": eval_loss, "perplexity": perplexity(eval_loss)}
        metrics.update(self._generation_metrics(examples[: self.cfg.eval_max_samples or len(examples)]))
        self.model.train()
        return metrics

    def _generation_metrics(self, examples: list[Encoded]) -> dict[str, float]:
        tok, bs = self.tokenizer, self.cfg.per_device_eval_batch_size
        max_new = self.cfg.max_new_tokens or 2 + max(
            len(tok(e.answer, add_special_tokens=False)["input_ids"]) for e in examples)
        em, f1 = [], []
        per_task: dict[str, list[float]] = {}
        for i in range(0, len(examples), bs):
            chunk = examples[i:i + bs]
            batch = {k: v.to(self.device) for k, v in collate_prompts(chunk, tok.pad_token_id).items()}
            with self._autocast():
                out = self.model.generate(**batch, max_new_tokens=max_new, do_sample=False,
                                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for ex, text in zip(chunk, texts, strict=True):
                em.append(exact_match(text, ex.answer))
                f1.append(token_f1(text, ex.answer))
                if ex.task:
                    per_task.setdefault(ex.task, []).append(em[-1])
        metrics = {"exact_match": sum(em) / len(em), "token_f1": sum(f1) / len(f1)}
        metrics.update({f"exact_match_{t}": sum(v) / len(v) for t, v in sorted(per_task.items())})
        return metrics

    # ------------------------------------------------------------------------------------------------ save
    def save(self, output_dir: str | Path, result: TrainResult | None = None) -> Path:
        """Model (or LoRA adapter) and tokenizer via save_pretrained, with the run's config and metrics beside."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        state = {"train": self.cfg.model_dump(), "model": self.model_cfg.model_dump(),
                 "result": asdict(result) if result else None}
        (out / "lmtune_run.json").write_text(json.dumps(state, indent=2, default=str))
        return out
