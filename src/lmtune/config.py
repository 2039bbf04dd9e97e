"""The experiment schema: the one place where input is validated.

Everything downstream receives plain, already-checked data. Messages name the field, the value received and
what would be accepted, because a tuning run that dies an hour in on a typo is the worst kind of waste.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmtune.errors import ConfigError
from lmtune.objectives import Condition, Objective, parse_condition
from lmtune.train.metrics import METRICS, metrics_on_test

_M = TypeVar("_M", bound=BaseModel)
# The names a config may give; `lmtune.strategies` maps each to its Optuna sampler and pruner.
SamplerName = Literal["grid", "random", "tpe", "gp", "nsga2"]
PrunerName = Literal["none", "asha", "hyperband", "median", "extrapolate"]
CombinedName = Literal["auto", "bohb", "asha", "hyperband", "pbt"]  # a sampler with a pruner, or PBT
StrategyName = Literal[SamplerName, CombinedName]
# What each combined strategy means: (sampler, pruner). ``auto`` is GP/TPE on predicted final values with pruning
# by learning-curve extrapolation (B2 in BENCHMARKS.md); ``bohb`` is the previous ``auto``, TPE + Hyperband.
COMBINED: dict[str, tuple[str, str]] = {"auto": ("auto", "extrapolate"), "bohb": ("tpe", "hyperband"),
                                        "asha": ("random", "asha"), "hyperband": ("random", "hyperband"),
                                        "pbt": ("random", "none")}
# The samplers whose first trials are independent uniform draws, which `search.startup: lhs` replaces.
STRATIFIED_STRATEGIES = ("random", "tpe", "gp")


def stratified_startup_fits(sampler: str, warm_start: bool) -> bool:
    """Whether a sampler's first trials are independent uniform draws (past studies shape them otherwise), which
    a Latin hypercube can replace."""
    return sampler in STRATIFIED_STRATEGIES and not warm_start

# The strategy of a multi-objective study that names none: expected hypervolume improvement (B8, BENCHMARKS.md).
MULTI_OBJECTIVE_STRATEGY = "gp"
# A study name is also a folder (<output_dir>/<study_name>): no path separators, no leading dot.
_STUDY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+ -]{0,127}")


def resolve(strategy: str, pruner: str | None) -> tuple[str, str]:
    """(sampler, pruner) names for a strategy and an optional explicit pruner; the explicit one wins."""
    sampler, implied = COMBINED.get(strategy, (strategy, "none"))
    return sampler, pruner or implied


def _safe_study_name(name: str) -> str:
    if not _STUDY_NAME.fullmatch(name):
        raise ValueError(f"{name[:60]!r}{'...' if len(name) > 60 else ''} cannot be a study name: it names the "
                         "study's folder too, so use 1-128 letters, digits, spaces and _ . + - (not starting with "
                         "'.', '-' or a space), e.g. 'lora-sweep-1'")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name_or_path: str = Field("builtin:tiny", description="HF hub id, local directory, or builtin:tiny/micro/"
                              "smollm2-135m-instruct")
    gguf_file: str | None = Field(None, description="a .gguf file in the folder name_or_path, loaded with "
                                  "transformers' GGUF support (de-quantized once and cached)")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _gguf(self) -> ModelConfig:
        if self.gguf_file is not None:
            if not self.gguf_file.lower().endswith(".gguf"):
                raise ValueError(f"model.gguf_file must name a .gguf file, got {self.gguf_file!r}")
            if self.name_or_path.startswith("builtin:"):
                raise ValueError("model.gguf_file is for your own GGUF file: set model.name_or_path to the folder "
                                 "that holds it (built-in models need no gguf_file)")
        return self


class BuiltinDataConfig(_Strict):
    tasks: list[str] | None = None
    n_train: int = Field(3000, ge=1)
    n_validation: int = Field(200, ge=1)
    n_test: int = Field(200, ge=1)
    seed: int = 0

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str] | None) -> list[str] | None:
        from lmtune.builtin.tasks import TASKS

        if tasks is not None:
            if not tasks:
                raise ValueError("is empty; leave it out to use every task")
            for t in tasks:
                if t not in TASKS:
                    raise ValueError(f"unknown task {t!r}; choose from {sorted(TASKS)}")
        return tasks


class DataConfig(_Strict):
    path: str | None = Field(None, description="JSONL/JSON file (Alpaca or chat rows); None = built-in tasks")
    validation_path: str | None = None
    test_path: str | None = None
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0
    builtin: BuiltinDataConfig = Field(default_factory=BuiltinDataConfig)
    prompt_template: str = Field(
        "auto", description="auto | chat | alpaca | a custom string containing {prompt}"
    )
    max_length: int = Field(256, ge=8)
    packing: bool = False
    max_train_samples: int | None = Field(None, ge=1, description="train on the first N training rows only")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if v not in ("auto", "chat", "alpaca") and "{prompt}" not in v:
            raise ValueError("must be auto, chat, alpaca, or a template string that contains {prompt}")
        return v

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.path is not None and self.validation_path is None and self.validation_fraction <= 0:
            raise ValueError("data.validation_fraction must be > 0 when no data.validation_path is given")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.validation_fraction + data.test_fraction must leave at least 10 % to train on")
        return self


class TrainConfig(_Strict):
    """Training arguments, named (and defaulted) as in HF `TrainingArguments` where one exists.

    The values a config gives here are its baseline: trial 0 of every study trains with them.
    """

    learning_rate: float = Field(5e-5, gt=0)
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(128, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs, as in HF")
    weight_decay: float = Field(0.0, ge=0)
    dropout: float = Field(0.0, ge=0, lt=1, description="model dropout (every *dropout* field of its config)")
    optim: Literal["adamw", "sgd", "rmsprop", "adafactor"] = "adamw"
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop")
    lr_scheduler_type: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts",
        "inverse_sqrt", "step", "warmup_stable_decay",
    ] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_decay_ratio: float = Field(0.1, gt=0, le=1, description="warmup_stable_decay: the share of training in the "
                                  "final decay (the LR is constant before it, so a partial run is a prefix of a "
                                  "longer one)")
    lr_step_gamma: float = Field(0.1, gt=0, le=1, description="step scheduler: LR factor at each milestone")
    lr_step_milestones: list[float] = Field([0.5, 0.75], description="step scheduler: fractions of training")
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    layerwise_lr_decay: float = Field(1.0, gt=0, le=1, description="LR x decay^(depth from the top)")
    bf16: bool = False
    fp16: bool = False
    label_smoothing_factor: float = Field(0.0, ge=0, lt=1)
    use_lora: bool = False
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: str | list[str] = "all-linear"
    augmentation: str = Field(
        "paraphrase", description="paraphrase, or a user function 'module:function' / 'file.py:function' called "
        "as function(row, rng) -> row")
    augmentation_ratio: float = Field(0.0, ge=0, le=4, description="augmented training rows added per training row")
    seed: int = 42
    eval_steps: int | None = Field(None, ge=1, description="None = 4 evaluations per run")
    eval_max_samples: int | None = Field(256, ge=1, description="validation rows used for generation metrics")
    max_new_tokens: int | None = Field(None, ge=1, description="None = longest reference answer + 2")
    early_stopping_patience: int | None = Field(None, ge=1)
    early_stopping_threshold: float = Field(0.0, ge=0)
    torch_num_threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    output_dir: str | None = None

    def with_params(self, params: dict[str, Any]) -> TrainConfig:
        """These training arguments with a trial's parameters applied, validated together."""
        try:
            return TrainConfig.model_validate({**self.model_dump(), **params})
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"invalid combination of parameters {params}: {'.'.join(map(str, err['loc']))}: "
                             f"{err['msg']}") from None

    @field_validator("augmentation")
    @classmethod
    def _augmentation(cls, v: str) -> str:
        if v != "paraphrase" and not re.fullmatch(r"[^:]+:[A-Za-z_]\w*", v):
            raise ValueError("must be 'paraphrase' or a function as 'package.module:function' or "
                             "'path/to/file.py:function'")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_bool_counts(cls, data: Any) -> Any:
        """YAML's `true` is no batch size: pydantic would take it as 1."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and field.annotation in (int, float, "int",
                                                                                          "float"):
                    raise ValueError(f"{name}: {value!r} is a boolean; give a number")
        return data

    @model_validator(mode="after")
    def _precision(self) -> TrainConfig:
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both true; choose one")
        if self.max_steps > 0 and "num_train_epochs" in self.model_fields_set and \
                self.num_train_epochs != TrainConfig.model_fields["num_train_epochs"].default:
            raise ValueError(f"max_steps ({self.max_steps}) and num_train_epochs ({self.num_train_epochs}) are both "
                             "set, and max_steps > 0 overrides the epochs (as in HF); remove one of them")
        if self.lr_scheduler_type == "warmup_stable_decay" and self.warmup_ratio + self.lr_decay_ratio > 1:
            raise ValueError(f"warmup_ratio ({self.warmup_ratio}) + lr_decay_ratio ({self.lr_decay_ratio}) exceed "
                             "1: warmup_stable_decay would have no room for its stable phase; lower one of them")
        if any(not 0 < m < 1 for m in self.lr_step_milestones):
            raise ValueError("lr_step_milestones must be fractions of training strictly between 0 and 1")
        return self


SEARCHABLE = tuple(
    n for n in TrainConfig.model_fields
    if n not in {"per_device_eval_batch_size", "eval_steps", "eval_max_samples", "max_new_tokens",
                 "early_stopping_patience", "early_stopping_threshold", "torch_num_threads", "device",
                 "output_dir"}
)


class ParamSpec(_Strict):
    """One search dimension. YAML shorthand: a scalar is a fixed value, a list is a categorical choice."""

    type: Literal["float", "int", "categorical", "fixed"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    value: Any = None
    values: list[Any] | None = Field(None, description="grid points (grid strategy) for float/int dimensions")
    condition: dict[str, Any] | None = Field(None, description="only sampled when e.g. {optim: sgd}")

    @model_validator(mode="before")
    @classmethod
    def _infer_type(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return {"type": "categorical", "choices": data} if isinstance(data, list) else {"type": "fixed",
                                                                                            "value": data}
        if "type" not in data:
            data = dict(data)
            if "choices" in data:
                data["type"] = "categorical"
            elif "value" in data:
                data["type"] = "fixed"
            elif all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool)
                     for k in ("low", "high")) and not isinstance(data.get("step"), float):
                data["type"] = "int"
            else:
                data["type"] = "float"
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type in ("float", "int"):
            if self.low is None or self.high is None:
                raise ValueError(f"a {self.type} parameter needs both low and high")
            if not (math.isfinite(self.low) and math.isfinite(self.high)):
                raise ValueError("low and high must be finite numbers")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is greater than high ({self.high}); swap them")
            if self.log and self.low <= 0:
                raise ValueError(f"log scale needs low > 0, got low={self.low}")
            if self.log and self.step is not None:
                raise ValueError("log and step cannot be combined (Optuna does not support it); drop one")
            if self.step is not None and self.step <= 0:
                raise ValueError(f"step must be > 0, got {self.step}")
            if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
                raise ValueError("an int parameter needs whole-number low and high")
            for v in self.values or []:
                if not isinstance(v, int | float) or not self.low <= v <= self.high:
                    raise ValueError(f"grid value {v!r} is outside [{self.low}, {self.high}]")
        elif self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices {self.choices} contain duplicates")
        elif self.value is None:
            raise ValueError("a fixed parameter needs a value")
        return self

    def candidates(self) -> list[Any]:
        """The values that will be tried by grid search, or the two bounds for continuous dimensions."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "fixed":
            return [self.value]
        if self.values:
            return list(self.values)
        assert self.low is not None and self.high is not None
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]


class BudgetConfig(_Strict):
    """Compute budgets beyond trial counts; the study stops at the first one reached."""

    fte: float | None = Field(None, gt=0, description="full-training equivalents: summed share of full runs")
    device_hours: float | None = Field(None, gt=0, description="summed trial wall time x devices, in hours")


class PBTConfig(_Strict):
    """Population-based training: see lmtune.strategies.PopulationBasedTraining."""

    population_size: int = Field(8, ge=2)
    segment_steps: int = Field(50, ge=1, description="optimizer steps between exploit/explore rounds")
    quantile: float = Field(0.25, gt=0, le=0.5, description="bottom quantile copies the top quantile")
    resample_probability: float = Field(0.25, ge=0, le=1)
    perturb_factors: list[float] = Field([0.8, 1.2], min_length=1)
    workers: int = Field(1, ge=1, description="local processes training members in parallel")
    checkpoint_dir: str | None = Field(None, description="default: <output_dir>/<study_name>/pbt")


class WarmStartSource(_Strict):
    study: str
    storage: str | None = Field(None, description="another storage URL; None = this study's")


class SearchConfig(_Strict):
    strategy: StrategyName = Field("tpe", description="tpe; with several objectives (objective.metrics) the "
                                   "default is gp")
    preset: Literal["lora", "full"] | None = Field(None, description="start from a preset space; space overrides")
    pruner: PrunerName | None = Field(
        None, description="None = the strategy's own (auto: extrapolate, bohb: hyperband, asha: asha, "
                          "hyperband: hyperband)")
    prune_on: str | None = Field(
        None, description="prune on this metric's curve (e.g. eval_loss, smoother than exact_match) while the "
                          "objective is objective.metric; needs the extrapolate pruner (strategy auto)")
    warm_start: list[str | WarmStartSource] = Field(
        default_factory=list, description="past studies (names on this storage, or {study, storage}) whose "
                                          "finished trials tpe/auto also model; they are not trials of this study")
    min_resource: int | None = Field(None, ge=1, description="pruning: optimizer steps before the first rung")
    reduction_factor: int = Field(3, ge=2, description="pruning: keep 1/reduction_factor of trials per rung")
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    pbt: PBTConfig = Field(default_factory=PBTConfig)
    seed: int = 0
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    n_trials: int | None = Field(10, ge=1, description="total trials of the study, resumed runs included")
    timeout: float | None = Field(None, gt=0, description="seconds for this invocation")
    baseline: bool = Field(True, description="enqueue the train: values as trial 0")
    allow_changed_config: bool = Field(False, description="resume a study although what makes its trials "
                                       "comparable (model, data, fixed training arguments, objective) changed")
    n_startup_trials: int | None = Field(None, ge=0, description="random trials before TPE/GP model the space")
    startup: Literal["random", "lhs"] = Field("random", description="how the startup trials are drawn: "
                                              "independently, or as a Latin hypercube so that a few of them span "
                                              "the space (a ladder rung's default)")
    oom_retries: int = Field(2, ge=0, description="retries of an out-of-memory trial, each with half the "
                             "micro-batch and twice the gradient accumulation")

    def stratified_startup_fits(self) -> bool:
        """Whether the first trials are independent uniform draws, which a Latin hypercube can replace."""
        return stratified_startup_fits(resolve(self.strategy, self.pruner)[0], bool(self.warm_start))

    @field_validator("prune_on")
    @classmethod
    def _known_prune_metric(cls, v: str | None) -> str | None:
        return v if v is None else _known_metric(v)

    @model_validator(mode="after")
    def _space(self) -> SearchConfig:
        for name, spec in self.space.items():
            if name not in SEARCHABLE:
                raise ValueError(
                    f"search.space.{name}: not a searchable training argument{_did_you_mean(name, SEARCHABLE)}"
                )
            for value in spec.candidates():
                try:
                    TrainConfig(**{name: value})
                except ValidationError as e:
                    msg = e.errors()[0]["msg"]
                    raise ValueError(f"search.space.{name}: value {value!r} is not allowed: {msg}") from None
            for parent, wanted in (spec.condition or {}).items():
                if parent == name or parent not in self.space:
                    raise ValueError(
                        f"search.space.{name}.condition refers to {parent!r}, which is not another parameter "
                        "of the space; condition on a categorical parameter of search.space"
                    )
                pspec = self.space[parent]
                allowed = pspec.candidates() if pspec.type in ("categorical", "fixed") else None
                if allowed is None:
                    raise ValueError(f"search.space.{name}.condition: {parent!r} must be categorical or fixed")
                wanted_list = wanted if isinstance(wanted, list) else [wanted]
                missing = [w for w in wanted_list if w not in allowed]
                if missing:
                    raise ValueError(
                        f"search.space.{name}.condition: {parent}={missing} can never happen; "
                        f"{parent} takes {allowed}"
                    )
        _check_acyclic(self.space)
        if self.prune_on is not None and resolve(self.strategy, self.pruner)[1] != "extrapolate":
            raise ValueError("search.prune_on: only the extrapolate pruner watches another metric; use strategy "
                             "auto or pruner extrapolate, or remove prune_on")
        if self.warm_start and self.strategy not in ("tpe", "auto"):
            raise ValueError("search.warm_start: only strategies tpe and auto learn from past studies")
        if self.startup == "lhs" and not self.stratified_startup_fits():
            raise ValueError(f"search.startup: lhs replaces the independent first draws of strategies "
                             f"{', '.join(STRATIFIED_STRATEGIES)} (with any pruner), and {self.strategy!r}"
                             f"{' with warm_start' if self.warm_start else ''} draws them otherwise; use startup "
                             "random")
        if self.strategy == "pbt" and self.pruner not in (None, "none"):
            raise ValueError("search.pruner: population-based training replaces pruning; remove the pruner")
        if self.strategy == "grid":
            for name, spec in self.space.items():
                if spec.type in ("float", "int") and not spec.values and not (spec.type == "int" or spec.step):
                    raise ValueError(
                        f"search.space.{name}: grid search needs finite values; add `values: [...]` "
                        "or a `step`, or make it categorical"
                    )
        return self


    def check_tunable(self) -> None:
        """A study needs something to compare: a dimension that varies, or fixed values against the baseline.
        Checked when a study runs, not at validation: the same config, space-less, drives `lmtune train`."""
        varies = any(len({repr(c) for c in spec.candidates()}) > 1 for spec in self.space.values())
        if self.space and (varies or self.baseline):
            return
        what = "is empty" if not self.space else (f"fixes every parameter ({', '.join(self.space)}) and "
                                                  "search.baseline is false")
        raise ConfigError(f"search.space {what}: there is nothing to tune; give a range or choices for at least "
                          "one training argument (or set search.preset), or use `lmtune train` for a single run")


class ObjectiveSpec(_Strict):
    """One objective of a multi-objective study. YAML shorthand: a bare metric name, its registered direction."""

    name: str
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known_metric(v)

    @model_validator(mode="after")
    def _direction(self) -> ObjectiveSpec:
        if self.direction is None:
            self.direction = "maximize" if METRICS[self.name].maximize else "minimize"
        return self


class ObjectiveConfig(_Strict):
    metric: str = "exact_match"
    direction: Literal["maximize", "minimize"] | None = None
    metrics: list[ObjectiveSpec] | None = Field(
        None, description="several objectives (a Pareto front): [exact_match, {name: flops, direction: minimize}]; "
                          "the first is objective.metric")
    constraints: list[str] = Field(default_factory=list, description="hard limits such as 'peak_memory_bytes <= "
                                   "20e9': infeasible trials inform the sampler and are never the best")

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known_metric(v)

    @field_validator("constraints")
    @classmethod
    def _limits(cls, v: list[str]) -> list[str]:
        texts = [parse_condition(c).text for c in v]
        if len(set(texts)) != len(texts):
            raise ValueError(f"{v} repeats a limit; give each once")
        return v

    @model_validator(mode="after")
    def _direction(self) -> ObjectiveConfig:
        if self.metrics is not None:
            names = [m.name for m in self.metrics]
            if not names:
                raise ValueError("objective.metrics is empty; list at least one metric, or remove it")
            if len(set(names)) != len(names):
                raise ValueError(f"objective.metrics {names} names a metric twice")
            first = self.metrics[0]
            if "metric" in self.model_fields_set and self.metric != first.name:
                raise ValueError(f"objective.metric ({self.metric!r}) is not the first of objective.metrics "
                                 f"({first.name!r}); the first entry is the objective metric: drop objective.metric")
            if self.direction is not None and self.direction != first.direction:
                raise ValueError(f"objective.direction ({self.direction}) contradicts objective.metrics[0] "
                                 f"({first.direction}); give the direction in objective.metrics")
            # Set quietly: validate_assignment would run this validator again.
            self.__dict__.update(metric=first.name, direction=first.direction)
        if self.direction is None:
            self.direction = "maximize" if METRICS[self.metric].maximize else "minimize"
        return self

    @property
    def maximize(self) -> bool:
        """The direction of the (first) objective."""
        return self.direction == "maximize"

    @property
    def objectives(self) -> list[Objective]:
        """Every objective in order; one for a single-objective study."""
        if self.metrics is None:
            return [Objective(self.metric, self.maximize)]
        return [Objective(m.name, m.direction == "maximize") for m in self.metrics]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def limits(self) -> list[Condition]:
        return [parse_condition(c) for c in self.constraints]

    def fingerprint(self) -> dict[str, Any]:
        """The objective as trials are compared by; the keys a single-objective, unconstrained study always had."""
        dumped = self.model_dump(exclude_none=True)
        if not dumped.get("constraints"):
            dumped.pop("constraints", None)
        return dumped


class SelectConfig(_Strict):
    """The selection phase: re-train the top-k configs (and the baseline) with several seeds, score on test."""

    top_k: int = Field(3, ge=1)
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    rule: Literal["mean", "pessimistic"] = Field("mean", description="pessimistic = mean one std towards worse")
    include_baseline: bool = True

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds {v} repeat a seed; give distinct seeds")
        return v


class ProxyModelConfig(_Strict):
    """How the proxy model differs from the target; any combination. Unset fields keep the target's value."""

    name_or_path: str | None = Field(None, description="a smaller model of the same family, used as it is")
    num_hidden_layers: int | None = Field(None, ge=1, description="keep N of the target's layers (weights kept)")
    layers: Literal["spread", "first"] = Field(
        "spread", description="which N layers: spread = evenly spaced, always the first and the last (a "
        "pretrained head keeps reading last-layer features); first = the first N")
    hidden_size: int | None = Field(None, ge=8, description="narrower model: a new random init")
    intermediate_size: int | None = Field(None, ge=8)
    num_attention_heads: int | None = Field(None, ge=1)
    num_key_value_heads: int | None = Field(None, ge=1)

    def shrinks(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if k not in ("name_or_path", "layers") and v is not None}


class ProxyStageConfig(_Strict):
    """Stage 1: the search runs on a cheap proxy of the target."""

    model: ProxyModelConfig = Field(default_factory=ProxyModelConfig)
    data_fraction: float = Field(1.0, gt=0, le=1, description="share of the training rows")
    steps_fraction: float = Field(1.0, gt=0, le=1, description="share of max_steps (or num_train_epochs)")
    n_trials: int | None = Field(None, ge=1, description="proxy trials; default search.n_trials")
    study_name: str | None = Field(None, description="default <study_name>-proxy; name an existing "
                                   "proxy study to try other transfer rules without re-tuning the proxy")
    metric: str | None = Field(None, description="the proxy's objective; default objective.metric. eval_loss is "
                               "less noisy than exact_match on short proxy runs")
    narrow: float | None = Field(None, gt=1, description="a ladder rung after the first searches the learning "
                                 "rate (and batch size) only within this factor of what the rungs before it "
                                 "predict for it")

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return v if v is None else _known_metric(v)

    @field_validator("study_name")
    @classmethod
    def _study_name(cls, v: str | None) -> str | None:
        return v if v is None else _safe_study_name(v)


class LocalSearchConfig(_Strict):
    """Stage 2's optional narrowed search around the best transferred config."""

    n_trials: int = Field(4, ge=1)
    factor: float = Field(2.0, gt=1, description="log dims: [v/factor, v*factor]; linear: v +- range/(2*factor)")


class TransferConfig(_Strict):
    """Stage 2: how the proxy's top configs move to the target."""

    top_k: int = Field(3, ge=1)
    learning_rate: Literal["width", "none", "fit"] | float = Field(
        "width", description="width: x proxy hidden_size / target hidden_size (muP-style); none; a factor; or fit: "
        "a power law in parameters and tokens fitted across the rungs of stages.proxies")
    batch_size: Literal["data", "none", "fit"] = Field(
        "none", description="data: effective batch x target/proxy training rows, via gradient_accumulation_steps; "
        "fit: a power law fitted across the rungs of stages.proxies")
    local_search: LocalSearchConfig | None = None
    max_uncertainty: float = Field(3.0, gt=1, description="fit: a prediction uncertain by more than this factor "
                                   "(one standard error) falls back to the fixed rule (width / none)")

    @field_validator("learning_rate")
    @classmethod
    def _positive(cls, v: str | float) -> str | float:
        if isinstance(v, float) and not (math.isfinite(v) and v > 0):
            raise ValueError("a learning-rate transfer factor must be a positive number")
        return v


class StagesConfig(_Strict):
    """Proxy tuning: tune on a small proxy, then re-run the top-k on the target (lmtune.proxy)."""

    proxy: ProxyStageConfig = Field(default_factory=ProxyStageConfig)
    proxies: list[ProxyStageConfig] | None = Field(
        None, min_length=2, description="a ladder of proxy scales, cheapest first, instead of one proxy; each rung "
        "is a study <study_name>-proxy-<k> (k from 1)")
    transfer: TransferConfig = Field(default_factory=TransferConfig)

    def rungs(self, study_name: str) -> list[tuple[str, ProxyStageConfig]]:
        """Each proxy stage with its study's name, in the order they run: the ladder, or the one proxy."""
        if self.proxies is None:
            return [(self.proxy.study_name or f"{study_name}-proxy", self.proxy)]
        return [(p.study_name or f"{study_name}-proxy-{k}", p) for k, p in enumerate(self.proxies, 1)]

    @model_validator(mode="after")
    def _ladder(self) -> StagesConfig:
        if self.proxies is not None and "proxy" in self.model_fields_set:
            raise ValueError("stages: give either proxy: (one proxy) or proxies: (a ladder), not both")
        if self.proxies is not None and self.proxies[0].narrow is not None:
            raise ValueError("stages.proxies.0.narrow: the first rung has no rung before it to predict around; "
                             "remove narrow there")
        fitted = [k for k in ("learning_rate", "batch_size") if getattr(self.transfer, k) == "fit"]
        if fitted and self.proxies is None:
            raise ValueError(f"stages.transfer.{fitted[0]}: fit needs a ladder of proxy scales to fit across; "
                             "list them under stages.proxies (at least 2), or use a fixed rule")
        if self.proxies is None and self.proxy.narrow is not None:
            raise ValueError("stages.proxy.narrow: only a ladder rung after the first narrows; remove it")
        return self


class ExecutorConfig(_Strict):
    """Where trials run. Without `workers`, one trial at a time in the `lmtune run` process."""

    type: Literal["local", "ray"] = Field("local", description="local worker processes, or Ray tasks")
    workers: int | None = Field(None, ge=1, description="trials run in parallel (local: worker processes)")
    gpus_per_trial: float = Field(1, ge=0, description="GPUs given to each trial (CUDA_VISIBLE_DEVICES / Ray)")
    threads_per_trial: int | None = Field(None, ge=1, description="CPU threads per trial; None = cores/workers")
    address: str | None = Field(None, description="ray: cluster address such as 'auto'; None starts a local Ray")
    heartbeat_interval: int = Field(30, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(120, ge=2, description="seconds without heartbeat before a trial counts as dead")

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> ExecutorConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must exceed heartbeat_interval "
                             f"({self.heartbeat_interval}), or every live trial would look dead")
        return self


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(None, description="default: sqlite:///<output_dir>/<study_name>/mlflow.db")
    experiment_name: str | None = Field(None, description="default: the study name")


class TensorBoardConfig(_Strict):
    log_dir: str | None = Field(None, description="runs go to <log_dir>/<study_name>/trial-NNNN; default "
                                "<output_dir>/<study_name>/tensorboard/trial-NNNN")


class TrackingConfig(_Strict):
    """Experiment trackers that receive every finished trial. YAML: `tracking: mlflow`, a list of names, or a
    mapping of name -> options."""

    mlflow: MlflowConfig | None = None
    tensorboard: TensorBoardConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = [data]
        if isinstance(data, list):
            unknown = [n for n in data if n not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown tracker {unknown[0]!r}; choose from {list(cls.model_fields)}")
            data = dict.fromkeys(data)
        if isinstance(data, dict):  # `mlflow:` with no options, or `mlflow: true`, switches it on with defaults
            data = {k: {} if v is None or v is True else v for k, v in data.items() if v is not False}
        return data

    @model_validator(mode="after")
    def _installed(self) -> TrackingConfig:
        import importlib.util

        for name, module in (("mlflow", "mlflow"), ("tensorboard", "tensorboard")):
            if getattr(self, name) is not None and importlib.util.find_spec(module) is None:
                raise ValueError(f"{name} is switched on but the {module} package is not installed; "
                                 "run pip install 'lmtune[tracking]' or remove it from tracking")
        return self


class ExperimentConfig(_Strict):
    study_name: str = "lmtune"
    storage: str = "sqlite:///lmtune.db"
    output_dir: str = Field("lmtune_runs", description="<output_dir>/<study_name>/ holds the best model")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    select: SelectConfig | None = Field(None, description="run the selection phase after the search")
    stages: StagesConfig | None = Field(None, description="tune on a proxy first, then transfer to the target")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _stages(self) -> ExperimentConfig:
        if self.stages is not None and self.search.strategy == "pbt":
            raise ValueError("stages: proxy tuning transfers finished configs; population-based training "
                             "changes them during a run. Use another search.strategy, or remove stages")
        if self.stages is None:
            return self
        where = "stages.proxy" if self.stages.proxies is None else "stages.proxies"
        names = [name for name, _ in self.stages.rungs(self.study_name)]
        if self.study_name in names or len(set(names)) < len(names):
            raise ValueError(f"{where}.study_name: each proxy study needs a name of its own; they are {names} "
                             f"and the target study is {self.study_name!r}")
        if self.search.n_trials is None and any(p.n_trials is None for _, p in self.stages.rungs(self.study_name)):
            raise ValueError(f"{where}.n_trials: set it (or search.n_trials) so each proxy stage ends")
        t = self.stages.transfer
        if t.learning_rate == "fit" and "learning_rate" not in self.search.space:
            raise ValueError("stages.transfer.learning_rate: fit needs learning_rate in search.space, to find its "
                             "optimum on each rung; add it or use a fixed rule")
        if t.batch_size == "fit" and not {"gradient_accumulation_steps", "per_device_train_batch_size"} & set(
                self.search.space):
            raise ValueError("stages.transfer.batch_size: fit needs gradient_accumulation_steps or "
                             "per_device_train_batch_size in search.space, to find the batch size's optimum on "
                             "each rung; add one or use batch_size: none / data")
        return self

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        from lmtune.presets import apply_preset

        return apply_preset(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _pbt_runs_its_own_workers(self) -> ExperimentConfig:
        if self.search.strategy == "pbt" and (self.executor.workers is not None or self.executor.type == "ray"):
            raise ValueError("executor: search.strategy pbt trains its population in search.pbt.workers local "
                             "processes; remove executor.workers / executor.type ray (or --workers/--executor)")
        return self

    @model_validator(mode="after")
    def _pbt_members_train_alike(self) -> ExperimentConfig:
        """Members are compared and copied segment by segment, so they all train the same number of steps."""
        if self.search.strategy != "pbt":
            return self
        varied = sorted({"max_steps", "num_train_epochs"} & set(self.search.space))
        if varied:
            raise ValueError(f"search.space.{varied[0]}: population-based training trains every member for the "
                             "same train.max_steps; remove it from the space")
        if self.train.max_steps <= 0:
            raise ValueError("train.max_steps: population-based training needs a run length in optimizer steps "
                             "(set train.max_steps > 0; epochs would give members of other batch sizes other "
                             "lengths)")
        if self.select is not None:
            raise ValueError("select: the selection phase re-trains static configs, and a PBT member's model "
                             "comes from a schedule of hyperparameters; remove select with search.strategy pbt")
        return self

    @model_validator(mode="after")
    def _searched_params_take_effect(self) -> ExperimentConfig:
        """A searched knob that the training never reads would spend trials on identical runs."""
        space = self.search.space
        for name, (switch, on) in _TAKES_EFFECT_WHEN.items():
            value = getattr(self.train, switch)
            if name in space and switch not in space and value not in on:
                raise ValueError(f"search.space.{name}: it has no effect with train.{switch} = {value!r}; set "
                                 f"train.{switch} to {' or '.join(map(repr, on))}, search {switch} too, or remove "
                                 f"{name} from the space")
        if "num_train_epochs" in space and self.train.max_steps > 0 and "max_steps" not in space:
            raise ValueError(f"search.space.num_train_epochs: it has no effect with train.max_steps = "
                             f"{self.train.max_steps} (max_steps > 0 overrides the epochs, as in HF); set "
                             "train.max_steps: -1 to search epochs, or remove num_train_epochs from the space")
        return self

    @model_validator(mode="after")
    def _selection_scores_test_metrics(self) -> ExperimentConfig:
        if self.select is not None and self.objective.metric not in metrics_on_test():
            raise ValueError(f"select: the selection phase scores configs on the test split, where "
                             f"{self.objective.metric!r} is not measured; use objective.metric one of "
                             f"{metrics_on_test()}, or remove select")
        return self

    @model_validator(mode="after")
    def _objectives_fit_the_search(self) -> ExperimentConfig:
        """What cannot rank trials by several objectives, or keep to constraints, is refused here, with why."""
        if self.objective.constraints and self.search.strategy == "pbt":
            raise ValueError("objective.constraints: population-based training copies and ranks members by "
                             "objective.metric alone; remove the constraints or use another search.strategy")
        if not self.objective.multi_objective:
            return self
        names = [o.name for o in self.objective.objectives]
        sc = self.search
        if "strategy" not in sc.model_fields_set:  # B8 in BENCHMARKS.md: gp found the best fronts
            sc.strategy = MULTI_OBJECTIVE_STRATEGY
        if sc.strategy in COMBINED:
            raise ValueError(f"search.strategy {sc.strategy!r} prunes or exploits by one metric, and objective.metrics "
                             f"has {len(names)} ({', '.join(names)}); use tpe (multi-objective TPE), nsga2, gp, random "
                             "or grid")
        if resolve(sc.strategy, sc.pruner)[1] != "none":
            raise ValueError(f"search.pruner {sc.pruner!r}: Optuna's pruners compare one value per step, and a "
                             "multi-objective study has several; remove the pruner (early stopping still applies)")
        if self.stages is not None:
            raise ValueError("stages: proxy tuning transfers the top configs by one metric; remove stages or use a "
                             "single objective")
        if sc.warm_start:
            raise ValueError("search.warm_start: past studies are modelled by one objective; remove warm_start or use "
                             "a single objective")
        return self

    @field_validator("study_name")
    @classmethod
    def _study_name(cls, v: str) -> str:
        return _safe_study_name(v)

    def fingerprint(self) -> dict[str, Any]:
        """What makes the trials of a study comparable: the model, the data (the files' contents, not their
        paths), the objective, and every training argument that is not searched or that the space fixes.
        Ranges may change between runs of a study; these may not, or old and new trials are ranked together
        though they measured different things."""
        space = self.search.space
        train = {k: v for k, v in self.train.model_dump().items() if k not in space and k not in _RUN_SETTINGS}
        fixed = {k: s.value for k, s in space.items() if s.type == "fixed"}
        files = {k: _sha256(p) for k in _DATA_FILES if (p := getattr(self.data, k))}
        return json.loads(json.dumps({
            "model": self.model.model_dump(), "data": self.data.model_dump(exclude=set(_DATA_FILES)),
            "data_files_sha256": files, "train": {**train, **fixed}, "objective": self.objective.fingerprint()},
            default=str))

    @model_validator(mode="after")
    def _pruning_needs_evaluations(self) -> ExperimentConfig:
        """A pruner compares trials at their intermediate evaluations; with one evaluation it has none."""
        t = self.train
        if resolve(self.search.strategy, self.search.pruner)[1] != "none" and t.max_steps > 0 and \
                t.eval_steps is not None and t.eval_steps >= t.max_steps and "max_steps" not in self.search.space:
            raise ValueError(f"train.eval_steps ({t.eval_steps}) is not below train.max_steps ({t.max_steps}): a "
                             "trial is evaluated only at its end, so the pruner of search.strategy "
                             f"{self.search.strategy!r} has nothing to compare; lower eval_steps, or set "
                             "search.pruner: none")
        return self

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if "://" not in v:  # sqlite:///file.db, postgresql://..., memory://
            raise ValueError(f"{v!r} is not a database URL; use e.g. sqlite:///lmtune.db or postgresql://...")
        return v


# Searchable knobs that only some settings use: name -> (the setting, the values under which it is used).
_TAKES_EFFECT_WHEN: dict[str, tuple[str, tuple[Any, ...]]] = {
    **dict.fromkeys(("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"), ("use_lora", (True,))),
    "momentum": ("optim", ("sgd", "rmsprop")),
    **dict.fromkeys(("adam_beta1", "adam_beta2"), ("optim", ("adamw",))),
}


# Training arguments that change how fast a run goes, not what it computes.
_RUN_SETTINGS = ("per_device_eval_batch_size", "torch_num_threads", "device", "output_dir")
_DATA_FILES = ("path", "validation_path", "test_path")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with contextlib.suppress(OSError), open(path, "rb") as f:  # a missing file is reported by the data loader
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_changes(stored: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings that differ between two fingerprints, as `section.key: old -> new`."""
    out = []
    for key in sorted(set(stored) | set(now)):
        old, new = stored.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += fingerprint_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return out


def _known_metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {list(METRICS)}")
    return name


def _check_acyclic(space: dict[str, ParamSpec]) -> None:
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"search.space conditions form a cycle: {' -> '.join([*path, name])}")
        state[name] = 1
        for parent in space[name].condition or {}:
            visit(parent, [*path, name])
        state[name] = 2

    for n in space:
        visit(n, [])


def _did_you_mean(name: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; choose from {sorted(options)}"


def _format_errors(err: ValidationError, source: str, section: tuple[str, ...] = ()) -> str:
    lines = []
    for e in err.errors():
        full = (*section, *e["loc"])
        loc = ".".join(str(p) for p in full)
        if e["type"] == "extra_forbidden":
            field = str(full[-1])
            model = _model_at(full[:-1])
            hint = _did_you_mean(field, list(model.model_fields)) if model else ""
            lines.append(f"{loc}: unknown key{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else ""
            lines.append(f"{loc or 'config'}: {msg}{got}")
    return f"invalid config {source}: " + "; ".join(lines)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        options = (field.annotation, *get_args(field.annotation)) if field is not None else ()
        sub = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return model


def _resolve_paths(cfg: ExperimentConfig, base: Path) -> None:
    """Relative paths in a YAML file mean relative to that file, so a config works from any directory."""

    def fix(p: str | None) -> str | None:
        return p if p is None or Path(p).expanduser().is_absolute() else str((base / p).resolve())

    cfg.data.path = fix(cfg.data.path)
    cfg.data.validation_path = fix(cfg.data.validation_path)
    cfg.data.test_path = fix(cfg.data.test_path)
    target, _, fn = cfg.train.augmentation.rpartition(":")
    if target.endswith(".py"):
        cfg.train.augmentation = f"{fix(target)}:{fn}"
    if cfg.tracking.tensorboard is not None:
        cfg.tracking.tensorboard.log_dir = fix(cfg.tracking.tensorboard.log_dir)
    name = cfg.model.name_or_path
    if name.startswith((".", "/", "~")) or (base / name).exists():
        cfg.model.name_or_path = str(Path(fix(name) or name).expanduser())
    db = cfg.storage.removeprefix("sqlite:///")
    if cfg.storage.startswith("sqlite:///") and db not in ("", ":memory:"):
        cfg.storage = f"sqlite:///{fix(db)}"


def validate_config(data: dict[str, Any] | ExperimentConfig, source: str = "(dict)",
                    base_dir: Path | None = None) -> ExperimentConfig:
    if isinstance(data, ExperimentConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping of keys, "
                          f"got {type(data).__name__}")
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    if base_dir is not None:
        _resolve_paths(cfg, base_dir)
    return cfg


def validate_section(model: type[_M], data: dict[str, Any], section: str, source: str = "(options)") -> _M:
    """One section of the config (e.g. `select`) given on the command line, with the same messages as the YAML."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, (section,))) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass the path of an experiment YAML file")
    loader = _UniqueKeyLoader(p.read_text())
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"invalid YAML in {p}{where}: {problem}; fix the syntax there") from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(f"config file {str(p)!r} is empty; start from examples/quickstart.yaml (a model, data, "
                          "train: values and a search: space)")
    return validate_config(data, str(p), p.parent.resolve())


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML (plain data only, no Python objects) that refuses a key given twice in one mapping, where
    PyYAML would silently keep the last: a second `learning_rate:` further down is a typo, not an override."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}; keep one of them",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def run_dir(cfg: ExperimentConfig) -> Path:
    """Where a study keeps its files: the best model, PBT checkpoints, selection results."""
    return Path(cfg.output_dir) / cfg.study_name
