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

import safetensors.torch
import torch
import torch.nn.functional as F
from transformers import get_scheduler

from lmtune.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from lmtune.errors import DivergedError, LmtuneError
from lmtune.train.augment import augmented_rows
from lmtune.train.data import (
    IGNORE,
    Encoded,
    Example,
    PromptRenderer,
    collate,
    collate_prompts,
    load_splits,
    pack,
    to_example,
)
from lmtune.train.memory import peak_memory_bytes, reset_peak_memory
from lmtune.train.metrics import answer_metrics, exact_match, perplexity
from lmtune.train.model import (
    check_model,
    count_parameters,
    dropout_keys,
    flop_weights,
    load_model,
    load_tokenizer,
    parameter_groups,
    selects_logits,
)

Report = Callable[[int, dict[str, float]], bool]
# Hyperparameters a running trainer can change in place (population-based training explores these).
MUTABLE_HPARAMS = ("learning_rate", "weight_decay", "momentum", "adam_beta1", "adam_beta2", "max_grad_norm",
                   "label_smoothing_factor", "dropout", "gradient_accumulation_steps")
Progress = Callable[[int, int, float], None]


@dataclass
class PreparedData:
    """Encoded splits; built once per process and shared by every trial on the same tokenizer and data."""

    train: list[Encoded]
    validation: list[Encoded]
    test: list[Encoded]
    dropped: int = 0
    train_examples: list[Example] = field(default_factory=list)
    renderer: PromptRenderer | None = None
    packing: bool = False
    max_length: int = 256

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
        return cls(train, validation, test, d1 + d2 + d3, splits.train, renderer, data.packing, data.max_length)

    def training_set(self, train: TrainConfig) -> list[Encoded]:
        """The encoded training rows plus this run's augmented copies, packed when asked. Validation and test
        rows are never augmented."""
        rows = self.train
        if train.augmentation_ratio > 0 and self.renderer is not None:
            sources = [e.row if e.row is not None else {"messages": e.messages} for e in self.train_examples]
            extra = [to_example(row, f"train.augmentation {train.augmentation!r} output for training row {i}")
                     for i, row in augmented_rows(sources, train.augmentation, train.augmentation_ratio,
                                                  train.seed)]
            rows = rows + self.renderer.encode_all(extra)[0]
        return pack(rows, self.max_length) if self.packing else rows


@dataclass
class TrainResult:
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    planned_steps: int = 0
    tokens: int = 0
    flops: float = 0.0  # training compute as `lmtune.train.model.FlopWeights` counts it, comparable across models
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    stop_reason: str | None = None  # "early_stopping" | "report" | None for a full run

    def cost(self) -> dict[str, float]:
        """What this run cost: optimizer steps, tokens, FLOPs, seconds, and full-training equivalents (its share
        of a full-length run). Stored as a trial's `cost`."""
        return {"steps": self.steps, "planned_steps": self.planned_steps, "tokens": self.tokens,
                "flops": self.flops, "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds,
                "fte": self.steps / max(self.planned_steps, 1)}

    @property
    def final_metrics(self) -> dict[str, float]:
        """The last evaluation's metrics, without its step."""
        return {k: v for k, v in self.metrics.items() if k != "step"}


def prepare(cfg: ExperimentConfig) -> tuple[Any, PreparedData]:
    """The tokenizer and encoded data of an experiment, after checking its model loads: what every run of it
    shares. A bad dataset or model path fails here, before any training."""
    check_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    return tokenizer, PreparedData.build(cfg.data, tokenizer)


class Trainer:
    @classmethod
    def from_config(cls, cfg: ExperimentConfig, train: TrainConfig | None = None, *,
                    prepared: tuple[Any, PreparedData] | None = None, report: Report | None = None,
                    progress: Progress | None = None) -> Trainer:
        """A run of the experiment `cfg` with training arguments `train` (default: its baseline), on the
        tokenizer and data of `prepare(cfg)` when given."""
        tokenizer, data = prepared or (None, None)
        return cls(cfg.model, cfg.data, train or cfg.train, objective_metric=cfg.objective.metric,
                   maximize=cfg.objective.maximize, prepared=data, tokenizer=tokenizer, report=report,
                   progress=progress)

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
        self._setup_device()
        reset_peak_memory(self.device)  # the run's peak: its model, optimizer state, batches and evaluation
        self.tokenizer = self.tokenizer or load_tokenizer(self.model_cfg)
        self.prepared = self.prepared or PreparedData.build(self.data_cfg, self.tokenizer)
        torch.manual_seed(cfg.seed)  # after loading, so LoRA init and dropout depend on the seed alone
        self.train_data = self.prepared.training_set(cfg)
        self._setup_model()
        self._setup_steps()
        self._setup_optimizer()
        self._setup_lr_scheduler()
        self.result = TrainResult(metrics={}, planned_steps=self.total_steps)
        self.step, self.micro_batches_seen = 0, 0
        self._batches = self._micro_batches()
        self._best_value: float | None = None
        self._bad_evals = 0
        self._loss_sum_since_eval, self._steps_since_eval = 0.0, 0
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
        self.flop_weights = flop_weights(self.model)
        self.selects_logits = selects_logits(self.model)

    def _setup_steps(self) -> None:
        cfg = self.cfg
        micro_batches = math.ceil(len(self.train_data) / cfg.per_device_train_batch_size)
        self.steps_per_epoch = max(1, math.ceil(micro_batches / cfg.gradient_accumulation_steps))
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs *
                                                                             self.steps_per_epoch)
        self.eval_steps = cfg.eval_steps or max(1, math.ceil(self.total_steps / 4))

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        groups = parameter_groups(self.model, cfg)
        if cfg.optim == "adamw":
            # The fused kernel (one pass over each tensor) is several times faster than the default foreach
            # update on CPU and CUDA; for a full fine-tune of a 135M model on CPU that is about a quarter of a step.
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                               eps=cfg.adam_epsilon, fused=self.device.type in ("cpu", "cuda"))
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
            decay = {"num_decay_steps": int(round(cfg.lr_decay_ratio * self.total_steps))}
            self.scheduler = get_scheduler(cfg.lr_scheduler_type, self.optimizer, num_warmup_steps=warmup,
                                           num_training_steps=self.total_steps,
                                           scheduler_specific_kwargs=decay
                                           if cfg.lr_scheduler_type == "warmup_stable_decay" else None)

    # ------------------------------------------------------------------------------------------------ train
    def train(self, until_step: int | None = None) -> TrainResult:
        """Train up to `until_step` (default: the end) and evaluate there. A later call continues where this
        one stopped, which is how population-based training runs a member segment by segment."""
        cfg, result = self.cfg, self.result
        end = min(until_step or self.total_steps, self.total_steps)
        start = time.perf_counter()
        self.model.train()
        while self.step < end and result.stop_reason is None:
            self.step += 1
            step = self.step
            t0 = time.perf_counter()
            micro_batches = [next(self._batches) for _ in range(cfg.gradient_accumulation_steps)]
            loss, tokens, scored = self._optimizer_step(micro_batches)
            if not math.isfinite(loss):
                raise DivergedError(f"diverged: training loss is {loss} at step {step}")
            result.train_seconds += time.perf_counter() - t0
            result.tokens += tokens
            result.flops += self.flop_weights.flops(tokens, scored)
            result.steps = step
            self._loss_sum_since_eval += loss
            self._steps_since_eval += 1
            if self.progress:
                self.progress(step, self.total_steps, loss)
            if step % self.eval_steps and step != end:
                continue
            metrics = self.evaluate()
            if not math.isfinite(metrics["eval_loss"]):
                raise DivergedError(f"diverged: validation loss is {metrics['eval_loss']} at step {step}")
            metrics.update(step=step, train_loss=self._loss_sum_since_eval / self._steps_since_eval,
                           train_seconds=result.train_seconds,
                           tokens_per_second=result.tokens / max(result.train_seconds, 1e-9),
                           elapsed_seconds=result.wall_seconds + time.perf_counter() - start,
                           flops=result.flops, fte=step / self.total_steps, trainable_params=float(self.n_trainable),
                           peak_memory_bytes=peak_memory_bytes(self.device))
            self._loss_sum_since_eval, self._steps_since_eval = 0.0, 0
            result.history.append(metrics)
            result.metrics = metrics
            stop = self.report(step, metrics) if self.report else False
            if step == self.total_steps:
                break
            if stop:
                result.stop_reason = "report"
            elif self._no_improvement_for(metrics[self.objective_metric]) >= (cfg.early_stopping_patience or 1e9):
                result.stop_reason = "early_stopping"
        result.wall_seconds += time.perf_counter() - start
        return result

    def _no_improvement_for(self, value: float) -> int:
        """Evaluations since the objective last improved by more than early_stopping_threshold."""
        threshold = self.cfg.early_stopping_threshold
        best = self._best_value
        improved = best is None or (value > best + threshold if self.maximize else value < best - threshold)
        self._best_value, self._bad_evals = (value, 0) if improved else (best, self._bad_evals + 1)
        return self._bad_evals

    def _micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Endless shuffled micro-batches. Epoch e's order depends only on (seed, e), and the position is
        kept in the trainer state, so a run resumed from a checkpoint sees the same data as an unbroken one."""
        data, bs = self.train_data, self.cfg.per_device_train_batch_size
        per_epoch = math.ceil(len(data) / bs)
        while True:
            epoch, pos = divmod(self.micro_batches_seen, per_epoch)
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.cfg.seed * 1009 + epoch))
            for i in range(pos * bs, len(order), bs):
                self.micro_batches_seen += 1
                yield collate([data[j] for j in order[i:i + bs]], self.tokenizer.pad_token_id)

    def _optimizer_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, int, int]:
        """One update over the accumulated micro-batches; the loss is averaged over all their answer tokens.
        Returns the loss, the input tokens, and the positions that got logits (the answer positions, or all
        tokens when the model cannot skip the others)."""
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
        return total_loss, tokens, n_targets if self.selects_logits else tokens

    def _loss_sum(self, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        """Summed cross-entropy over the answer tokens. Logits at position t predict token t+1, and only the
        positions that predict an answer token get logits at all: with the loss on answers only, that spares
        the vocabulary projection and its softmax on every prompt and padding position (HF's Trainer computes
        them all)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        targets = batch["labels"][:, 1:]
        if self.selects_logits:
            keep = F.pad(targets != IGNORE, (0, 1), value=False)
            logits = self.model(**inputs, logits_to_keep=keep).logits.float()
            labels = targets[keep[:, :-1]]
        else:
            logits = self.model(**inputs).logits[:, :-1].float()
            labels = targets
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
        scored = answer_metrics()
        scores: dict[str, list[float]] = {m.name: [] for m in scored}
        per_task: dict[str, list[float]] = {}
        for i in range(0, len(examples), bs):
            chunk = examples[i:i + bs]
            batch = {k: v.to(self.device) for k, v in collate_prompts(chunk, tok.pad_token_id).items()}
            with self._autocast():
                out = self.model.generate(**batch, max_new_tokens=max_new, do_sample=False,
                                          pad_token_id=tok.pad_token_id, eos_token_id=self._eos_ids())
            texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for ex, text in zip(chunk, texts, strict=True):
                for m in scored:
                    scores[m.name].append(m.per_answer(text, ex.answer))  # type: ignore[misc]
                if ex.task:
                    per_task.setdefault(ex.task, []).append(exact_match(text, ex.answer))
        metrics = {name: sum(v) / len(v) for name, v in scores.items()}
        metrics.update({f"exact_match_{t}": sum(v) / len(v) for t, v in sorted(per_task.items())})
        return metrics

    def _eos_ids(self) -> list[int]:
        """Where greedy answers stop: the tokenizer's EOS (the end of an assistant turn in its chat template)
        plus every EOS in the model's generation config (Llama 3 lists several, e.g. <|eot_id|>)."""
        ids = [self.tokenizer.eos_token_id]
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        for i in extra if isinstance(extra, list) else [extra]:
            if i is not None and i not in ids:
                ids.append(int(i))
        return ids

    # ------------------------------------------------------------------------------------------------ state
    def save_state(self, path: str | Path) -> Path:
        """Everything needed to continue this run elsewhere: weights as safetensors, optimizer and scheduler
        state in a tensors-and-numbers file that loads with `torch.load(weights_only=True)`."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_model(self.model, str(out / "model.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "step": self.step, "micro_batches_seen": self.micro_batches_seen,
                    "rng": torch.get_rng_state()}, out / "trainer_state.pt")
        return out

    def load_state(self, path: str | Path) -> None:
        """Continue from `save_state`; the trainer must have been set up with the same model and optimizer."""
        src = Path(path)
        safetensors.torch.load_model(self.model, str(src / "model.safetensors"), device=str(self.device))
        state = torch.load(src / "trainer_state.pt", weights_only=True, map_location=self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.micro_batches_seen = int(state["step"]), int(state["micro_batches_seen"])
        torch.set_rng_state(state["rng"].cpu())  # dropout masks continue as in an unbroken run
        self.result.steps = self.step

    def set_hparams(self, changes: dict[str, Any]) -> None:
        """Change hyperparameters mid-run (PBT's explore step) without losing optimizer state.

        Only what can change in place is allowed here; the rest (optimizer type, batch size, LoRA shape, ...)
        is fixed for the life of a run.
        """
        unknown = set(changes) - set(MUTABLE_HPARAMS)
        if unknown:
            raise LmtuneError(f"{sorted(unknown)} cannot change during a run; mutable: {list(MUTABLE_HPARAMS)}")
        old, new = self.cfg, TrainConfig.model_validate({**self.cfg.model_dump(), **changes})
        ratio = new.learning_rate / old.learning_rate
        self.scheduler.base_lrs = [b * ratio for b in self.scheduler.base_lrs]
        for g in self.optimizer.param_groups:
            g["lr"] *= ratio
            g["initial_lr"] *= ratio  # set by LambdaLR, the class of every scheduler here
            if g.get("apply_decay"):
                g["weight_decay"] = new.weight_decay
            if "momentum" in g:
                g["momentum"] = new.momentum
            if "betas" in g:
                g["betas"] = (new.adam_beta1, new.adam_beta2)
        if new.dropout != old.dropout:
            for key in dropout_keys(_base_config(self.model)):
                setattr(_base_config(self.model), key, new.dropout)
            for module in self.model.modules():
                if isinstance(module, torch.nn.Dropout) and "lora" not in type(module).__name__.lower():
                    module.p = new.dropout
                if isinstance(getattr(module, "attention_dropout", None), float):
                    module.attention_dropout = new.dropout
        self.cfg = new

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


def _base_config(model: torch.nn.Module) -> Any:
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config
