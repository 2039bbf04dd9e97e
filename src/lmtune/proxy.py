"""Proxy tuning: search on a cheap proxy of the target, then re-run the proxy's top-k on the target.

Tuning a large model directly costs a full run per trial. Most hyperparameters keep their optimum when the model
gets shallower, the data smaller or the run shorter; the learning rate does not (with Adam its optimum for hidden
weights falls roughly as 1/width, the muP observation of Yang et al. 2022, "Tensor Programs V"), and the right
batch size grows with the data. So stage 1 tunes a proxy (fewer layers and/or a narrower model, a data subset,
fewer steps), and stage 2 moves its top-k configs to the target through declared transfer rules, optionally with
a narrowed local search around the best one. Both stages are ordinary studies on the same storage
(`<study_name>-proxy` and `<study_name>`), so they resume and report like any other.

Cost is compared in training compute (6 x parameters x tokens): a proxy trial's cost in target full-training
equivalents is its FLOPs over those of one full target run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from transformers import AutoConfig, AutoModelForCausalLM

from lmtune import records
from lmtune.config import (
    BudgetConfig,
    ExperimentConfig,
    ObjectiveConfig,
    ParamSpec,
    StagesConfig,
    TransferConfig,
    run_dir,
)
from lmtune.errors import LmtuneError
from lmtune.records import TrialRecord
from lmtune.results import ranked_trials
from lmtune.study import Study, default_startup_trials, open_tuning_study
from lmtune.train.data import load_splits
from lmtune.train.model import load_tokenizer, resolve_path


# ---------------------------------------------------------------------------------------------------- the proxy
def build_proxy_model(cfg: ExperimentConfig) -> Path:
    """The proxy as a `save_pretrained` directory, so stage 1 loads it through the ordinary model path.

    Fewer layers only: the target's first N layers with their (pretrained) weights. A narrower model cannot
    keep the target's weights, so it is a fresh seeded init of the reduced config: meaningful for models you
    train from scratch, or tune on a smaller sibling model instead (`name_or_path`).
    """
    stages = _stages(cfg)
    source = stages.proxy.model.name_or_path or cfg.model.name_or_path
    # A sibling model is its own checkpoint: the target's gguf_file is not looked for in it.
    source_cfg = cfg.model.model_copy(update={"name_or_path": source} if source == cfg.model.name_or_path else
                                      {"name_or_path": source, "gguf_file": None})
    shrink = stages.proxy.model.shrinks()
    out = run_dir(cfg) / ("proxy-model-" + "-".join(f"{k}{v}" for k, v in sorted(shrink.items())))
    if not shrink:
        return Path(source) if Path(source).exists() and not source_cfg.gguf_file else Path(resolve_path(
            source_cfg))
    path = resolve_path(source_cfg)
    if (out / "config.json").is_file():
        return out
    trust = cfg.model.trust_remote_code
    config = _shrunk_config(AutoConfig.from_pretrained(path, trust_remote_code=trust), shrink)
    if set(shrink) <= {"num_hidden_layers"}:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=trust,
                                                     dtype=torch.float32)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    tmp = out.with_name(f"{out.name}.tmp")
    model.save_pretrained(tmp)
    load_tokenizer(cfg.model.model_copy(update={"name_or_path": path, "gguf_file": None})).save_pretrained(tmp)
    tmp.rename(out)
    return out


def _shrunk_config(config: Any, shrink: dict[str, int]) -> Any:
    """The config with fewer layers / a smaller width, keeping its attention shapes consistent."""
    heads = shrink.get("num_attention_heads", config.num_attention_heads)
    if ("hidden_size" in shrink or "num_attention_heads" in shrink) and getattr(config, "head_dim", None):
        config.head_dim = shrink.get("hidden_size", config.hidden_size) // heads
    kv = getattr(config, "num_key_value_heads", None)
    if "num_key_value_heads" not in shrink and kv is not None and (kv == config.num_attention_heads
                                                                   or heads % kv):
        config.num_key_value_heads = heads  # multi-head stays multi-head; an impossible grouping falls back to it
    for key, value in shrink.items():
        setattr(config, key, value)
    return config


def proxy_config(cfg: ExperimentConfig, proxy_model: Path, n_train: int) -> ExperimentConfig:
    """The target's experiment shrunk to the proxy: model, training rows and steps; same validation data."""
    p = _stages(cfg).proxy
    train = cfg.train.model_copy(update=_scaled_length(cfg, p.steps_fraction))
    data = cfg.data.model_copy(update={"max_train_samples": max(1, round(p.data_fraction * n_train))})
    space = {name: _scaled_spec(spec, p.steps_fraction, integer=name == "max_steps")
             if name in ("max_steps", "num_train_epochs") else spec for name, spec in cfg.search.space.items()}
    search = cfg.search.model_copy(update={"n_trials": p.n_trials or cfg.search.n_trials, "space": space})
    objective = ObjectiveConfig(metric=p.metric) if p.metric else cfg.objective
    return cfg.model_copy(update={
        "study_name": p.study_name or f"{cfg.study_name}-proxy", "model": cfg.model.model_copy(update={
            "name_or_path": str(proxy_model), "gguf_file": None}), "data": data, "train": train, "search": search,
        "select": None, "stages": None, "objective": objective})


def _scaled_length(cfg: ExperimentConfig, fraction: float) -> dict[str, Any]:
    t = cfg.train
    if t.max_steps > 0:
        steps = max(1, round(fraction * t.max_steps))
        upd: dict[str, Any] = {"max_steps": steps}
        if t.eval_steps:
            upd["eval_steps"] = max(1, min(steps, round(fraction * t.eval_steps)))
        return upd
    return {"num_train_epochs": t.num_train_epochs * fraction}


def _scaled_spec(spec: ParamSpec, fraction: float, integer: bool) -> ParamSpec:
    """A searched run length shortened like train.max_steps: every bound, grid point and choice (a
    non-positive max_steps, "use epochs", stays as it is)."""
    def scaled(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            return v
        return max(1, round(v * fraction)) if integer else v * fraction

    update: dict[str, Any] = {"low": scaled(spec.low), "high": scaled(spec.high), "value": scaled(spec.value)}
    if spec.type == "int" and not integer:  # epochs 1..5 at half length are 0.5..2.5, not int(0.5) = 0
        update["type"] = "float"
    if spec.step is not None:
        update["step"] = scaled(spec.step)
    for key in ("values", "choices"):
        if getattr(spec, key) is not None:
            update[key] = list(dict.fromkeys(scaled(v) for v in getattr(spec, key)))
    return spec.model_copy(update=update)


# ---------------------------------------------------------------------------------------------------- transfer
def transfer(params: dict[str, Any], rules: TransferConfig, width_ratio: float, data_ratio: float,
             steps_ratio: float, base_accumulation: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(searched params for the target, training arguments outside the space that the rules changed).

    width_ratio = proxy hidden_size / target hidden_size; data_ratio and steps_ratio = target / proxy.
    """
    out = dict(params)
    overrides: dict[str, Any] = {}
    if "learning_rate" in out:
        factor = width_ratio if rules.learning_rate == "width" else (
            1.0 if rules.learning_rate == "none" else float(rules.learning_rate))
        out["learning_rate"] = out["learning_rate"] * factor
    if rules.batch_size == "data" and data_ratio != 1.0:
        # Scale the effective batch through accumulation, so the target's memory per micro-batch is unchanged.
        acc = out.get("gradient_accumulation_steps", base_accumulation)
        new_acc = max(1, round(acc * data_ratio))
        if "gradient_accumulation_steps" in out:
            out["gradient_accumulation_steps"] = new_acc
        else:
            overrides["gradient_accumulation_steps"] = new_acc
    if "max_steps" in out and out["max_steps"] > 0:  # the proxy searched shortened run lengths
        out["max_steps"] = max(1, round(out["max_steps"] * steps_ratio))
    if "num_train_epochs" in out:
        out["num_train_epochs"] = out["num_train_epochs"] * steps_ratio
    return out, overrides


def narrowed_space(space: dict[str, ParamSpec], center: dict[str, Any], factor: float) -> dict[str, ParamSpec]:
    """The space around `center`: log dimensions within a factor, linear ones within range/(2 factor) and
    inside the declared range (momentum stays below 1, accumulation at least 1), the rest as declared. A
    transferred optimum can lie outside the declared range: the bounds then reach out to it, no further."""
    out = dict(space)
    for name, spec in space.items():
        if spec.type not in ("float", "int") or spec.values or name not in center:
            continue
        v = float(center[name])
        assert spec.low is not None and spec.high is not None
        if spec.log:
            low, high = v / factor, v * factor
        else:
            half = (spec.high - spec.low) / (2 * factor)
            low, high = max(v - half, min(spec.low, v)), min(v + half, max(spec.high, v))
        if spec.type == "int":
            low, high = math.floor(low), math.ceil(high)
            low = max(low, 1) if spec.log else low
        out[name] = spec.model_copy(update={"low": low, "high": max(high, low), "step": spec.step})
    return out


# ---------------------------------------------------------------------------------------------------- stages
@dataclass
class ProxyStage:
    """Stage 1: the proxy's experiment, and the target's training rows (the data ratio is taken against them)."""

    cfg: ExperimentConfig
    n_train: int


@dataclass
class TargetStage:
    """Stage 2: the target study with the baseline and the transferred configs queued, and the config that runs
    it (its own trial count, no FTE budget, the narrowed space of a local search)."""

    cfg: ExperimentConfig
    study: Study
    width_ratio: float
    data_ratio: float
    steps_ratio: float


def plan_proxy(cfg: ExperimentConfig) -> ProxyStage:
    """Build the proxy model and the proxy's experiment config."""
    n_train = len(load_splits(cfg.data).train)
    return ProxyStage(proxy_config(cfg, build_proxy_model(cfg), n_train), n_train)


def plan_target(cfg: ExperimentConfig, proxy: ProxyStage, proxy_study: Study) -> TargetStage:
    """Open the target study and queue its stage-2 trials: the baseline, then the proxy's top-k transferred by
    the declared rules (once each, so a resumed stage 2 does not queue them again)."""
    stages = _stages(cfg)
    if not _top_k(proxy_study.optuna, 1):
        reasons = {TrialRecord(t).fail_reason or t.state.name.lower() for t in proxy_study.trials}
        raise LmtuneError(f"the proxy stage ({proxy_study.name}) has no completed trial to transfer; its trials "
                          f"ended with: {sorted(reasons)[:3]}")
    rules = stages.transfer
    width_ratio = _hidden_size(proxy.cfg) / _hidden_size(cfg)
    data_ratio = proxy.n_train / (proxy.cfg.data.max_train_samples or proxy.n_train)
    steps_ratio = 1.0 / stages.proxy.steps_fraction
    moved = [(t, *transfer(dict(t.params), rules, width_ratio, data_ratio, steps_ratio,
                           cfg.train.gradient_accumulation_steps)) for t in _top_k(proxy_study.optuna, rules.top_k)]
    space = dict(cfg.search.space)
    local = rules.local_search
    if local is not None and moved:
        space = narrowed_space(space, moved[0][1], local.factor)
    target_cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"space": space})})
    target = open_tuning_study(target_cfg)
    target.enqueue_baseline()  # trial 0 of the target study, before the transferred configs
    done = {t.user_attrs.get(records.TRANSFERRED_FROM) for t in target.trials}
    for t, params, overrides in moved:
        if t.number not in done:
            target.optuna.enqueue_trial(params, user_attrs={records.TRANSFERRED_FROM: t.number,
                                                            records.OVERRIDES: overrides,
                                                            records.PROXY_VALUE: t.value})
    n_target = int(target.baseline is not None) + len(moved) + (local.n_trials if local else 0)
    # Stage 2 runs where the search would (here, local workers or Ray), with its own trial count and no budget.
    startup = target_cfg.search.n_startup_trials
    stage2 = target_cfg.search.model_copy(update={  # the startup trials the target study was opened with
        "n_trials": n_target, "budget": BudgetConfig(),
        "n_startup_trials": default_startup_trials(cfg.search.n_trials) if startup is None else startup})
    return TargetStage(target_cfg.model_copy(update={"search": stage2, "stages": None}), target, width_ratio,
                       data_ratio, steps_ratio)


def record_stages(proxy_study: Study, target: TargetStage) -> None:
    """Store the transfer's ratios and both stages' cost on the target study."""
    target.study.optuna.set_user_attr(records.STAGES, _summary(proxy_study, target))


def _top_k(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in ranked_trials(study) if not TrialRecord(t).is_baseline][:k]


def _summary(proxy: Study, target: TargetStage) -> dict[str, Any]:
    """Both stages' cost in target full-training equivalents, by training FLOPs."""
    costs = [TrialRecord(t).cost for t in target.study.trials if t.state == TrialState.COMPLETE]
    full = [c for c in costs if c.get("steps")]
    per_full = statistics.fmean(c["flops"] / c["steps"] * c["planned_steps"] for c in full) if full else None
    proxy_flops = sum(TrialRecord(t).cost.get("flops", 0.0) for t in proxy.trials)
    target_flops = sum(TrialRecord(t).cost.get("flops", 0.0) for t in target.study.trials)
    return {"proxy_study": proxy.name, "proxy_trials": len(proxy.trials), "width_ratio": target.width_ratio,
            "data_ratio": target.data_ratio, "steps_ratio": target.steps_ratio,
            "proxy_fte_target": proxy_flops / per_full if per_full else None,
            "target_fte": target_flops / per_full if per_full else None}


def _hidden_size(cfg: ExperimentConfig) -> int:
    config = AutoConfig.from_pretrained(resolve_path(cfg.model), trust_remote_code=cfg.model.trust_remote_code)
    return int(config.hidden_size)


def _stages(cfg: ExperimentConfig) -> StagesConfig:
    if cfg.stages is None:
        raise ValueError("the config has no stages: section")
    return cfg.stages
