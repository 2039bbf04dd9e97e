"""Proxy tuning: search on a cheap proxy of the target, then re-run the proxy's top-k on the target.

Tuning a large model directly costs a full run per trial. Most hyperparameters keep their optimum when the model
gets shallower, the data smaller or the run shorter; the learning rate does not (with Adam its optimum for hidden
weights falls roughly as 1/width, the muP observation of Yang et al. 2022, "Tensor Programs V"), and the right
batch size grows with the data. So stage 1 tunes a proxy (fewer layers and/or a narrower model, a data subset,
fewer steps), and stage 2 moves its top-k configs to the target through declared transfer rules, optionally with
a narrowed local search around the best one. Both stages are ordinary studies on the same storage
(`<study_name>-proxy` and `<study_name>`), so they resume and report like any other.

Cost is compared in training compute (`lmtune.train.model.FlopWeights`): a proxy trial's cost in target
full-training equivalents is its FLOPs over those of one full target run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from transformers import AutoConfig, AutoModelForCausalLM

from lmtune import records
from lmtune import transfer as transfer_laws
from lmtune.config import (
    BudgetConfig,
    ExperimentConfig,
    ObjectiveConfig,
    ParamSpec,
    ProxyStageConfig,
    StagesConfig,
    TransferConfig,
    run_dir,
)
from lmtune.errors import LmtuneError
from lmtune.records import TrialRecord
from lmtune.results import ranked_trials
from lmtune.study import Study, default_startup_trials, open_tuning_study
from lmtune.train.data import load_splits
from lmtune.train.model import LAYER_KEY, load_tokenizer, resolve_path


# ---------------------------------------------------------------------------------------------------- the proxy
def build_proxy_model(cfg: ExperimentConfig, rung: ProxyStageConfig | None = None) -> Path:
    """The proxy as a `save_pretrained` directory, so stage 1 loads it through the ordinary model path.

    Fewer layers only: N of the target's layers with their (pretrained) weights (`kept_layers`). A narrower
    model cannot keep the target's weights, so it is a fresh seeded init of the reduced config: meaningful for
    models you train from scratch, or tune on a smaller sibling model instead (`name_or_path`).
    """
    rung = rung or _stages(cfg).proxy
    source = rung.model.name_or_path or cfg.model.name_or_path
    # A sibling model is its own checkpoint: the target's gguf_file is not looked for in it.
    source_cfg = cfg.model.model_copy(update={"name_or_path": source} if source == cfg.model.name_or_path else
                                      {"name_or_path": source, "gguf_file": None})
    shrink = rung.model.shrinks()
    layers_only = set(shrink) == {"num_hidden_layers"}  # the target's own weights, so which layers matters
    out = run_dir(cfg) / ("proxy-model-" + "-".join(f"{k}{v}" for k, v in sorted(shrink.items()))
                          + (f"-{rung.model.layers}" if layers_only else ""))
    if not shrink:
        return Path(source) if Path(source).exists() and not source_cfg.gguf_file else Path(resolve_path(
            source_cfg))
    path = resolve_path(source_cfg)
    if (out / "config.json").is_file():
        return out
    trust = cfg.model.trust_remote_code
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    if layers_only:
        keep = kept_layers(config.num_hidden_layers, shrink["num_hidden_layers"], rung.model.layers)
        full = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust, dtype=torch.float32)
        model = AutoModelForCausalLM.from_config(_kept_config(config, keep), trust_remote_code=trust,
                                                 dtype=torch.float32)
        model.load_state_dict(_kept_state(full.state_dict(), keep))
    else:
        config = _shrunk_config(config, shrink)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    tmp = out.with_name(f"{out.name}.tmp")
    model.save_pretrained(tmp)
    load_tokenizer(cfg.model.model_copy(update={"name_or_path": path, "gguf_file": None})).save_pretrained(tmp)
    tmp.rename(out)
    return out


def kept_layers(n_layers: int, n_kept: int, how: str = "spread") -> list[int]:
    """The indices of the target's layers a layer-dropped proxy keeps, in order.

    `spread` keeps evenly spaced layers, always the first and the last: a pretrained head reads last-layer
    features, and the first N layers alone feed it something it never saw (SmolLM2-135M's first 4 of 30 layers
    reach an eval loss of 6.5 after 12 LoRA steps where layers 0/10/19/29 reach 1.4; BENCHMARKS B5). `first`
    keeps layers 0..N-1, which is all a model trained from scratch needs.
    """
    n_kept = min(n_kept, n_layers)
    if how == "first" or n_kept == n_layers:
        return list(range(n_kept))
    if n_kept == 1:
        return [n_layers - 1]
    return [round(i * (n_layers - 1) / (n_kept - 1)) for i in range(n_kept)]


def _kept_config(config: Any, keep: list[int]) -> Any:
    """The config with only the `keep` layers; per-layer settings (lists as long as the layers, such as
    `layer_types`) keep theirs."""
    n_layers = config.num_hidden_layers
    for key, value in list(vars(config).items()):
        if isinstance(value, list | tuple) and len(value) == n_layers and key != "architectures":
            setattr(config, key, type(value)(value[i] for i in keep))
    config.num_hidden_layers = len(keep)
    return config


def _kept_state(state: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """The target's weights with the dropped layers left out and the kept ones renumbered 0..len(keep)-1."""
    new_index = {old: new for new, old in enumerate(keep)}
    out = {}
    for name, tensor in state.items():
        m = LAYER_KEY.search(name)
        if m is None:
            out[name] = tensor
        elif int(m.group(1)) in new_index:
            out[f"{name[:m.start(1)]}{new_index[int(m.group(1))]}{name[m.end(1):]}"] = tensor
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


def proxy_config(cfg: ExperimentConfig, proxy_model: Path, n_train: int, rung: ProxyStageConfig | None = None,
                 study_name: str | None = None) -> ExperimentConfig:
    """The target's experiment shrunk to the proxy (`rung`, default the one `stages.proxy`): model, training
    rows and steps; same validation data."""
    p = rung or _stages(cfg).proxy
    train = cfg.train.model_copy(update=_scaled_length(cfg, p.steps_fraction))
    data = cfg.data.model_copy(update={"max_train_samples": max(1, round(p.data_fraction * n_train))})
    space = {name: _scaled_spec(spec, p.steps_fraction, integer=name == "max_steps")
             if name in ("max_steps", "num_train_epochs") else spec for name, spec in cfg.search.space.items()}
    search = cfg.search.model_copy(update={"n_trials": p.n_trials or cfg.search.n_trials, "space": space})
    if _stages(cfg).proxies is not None and "startup" not in cfg.search.model_fields_set \
            and search.stratified_startup_fits():
        # A rung has a few trials, often all of them startup draws: spread them (B5 on SmolLM2, BENCHMARKS.md).
        search = search.model_copy(update={"startup": "lhs"})
    objective = ObjectiveConfig(metric=p.metric) if p.metric else cfg.objective
    return cfg.model_copy(update={
        "study_name": study_name or p.study_name or f"{cfg.study_name}-proxy", "model": cfg.model.model_copy(update={
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
    """A proxy stage (the one proxy, or a rung of a ladder): its experiment and its rung's settings, and the
    target's training rows (the data ratio is taken against them)."""

    cfg: ExperimentConfig
    n_train: int
    rung: ProxyStageConfig


@dataclass
class Scale:
    """Where a stage sits, as the transfer rules and the fitted laws see it."""

    n_params: int
    hidden: int
    rows: int  # training rows
    steps_fraction: float
    token_share: float  # its training tokens at the config's batch size, as a share of the target's


@dataclass
class TargetStage:
    """Stage 2: the target study with the baseline and the transferred configs queued, and the config that runs
    it (its own trial count, no FTE budget, the narrowed space of a local search)."""

    cfg: ExperimentConfig
    study: Study
    width_ratio: float
    data_ratio: float
    steps_ratio: float


Done = list[tuple[ProxyStage, Study]]  # the proxy stages that have run, in order, with their studies


def plan_rungs(cfg: ExperimentConfig) -> list[ProxyStage]:
    """Build each proxy model and its experiment config: the one proxy, or the ladder's rungs in their order."""
    n_train = len(load_splits(cfg.data).train)
    return [ProxyStage(proxy_config(cfg, build_proxy_model(cfg, rung), n_train, rung, name), n_train, rung)
            for name, rung in _stages(cfg).rungs(cfg.study_name)]


def narrow_rung(cfg: ExperimentConfig, stage: ProxyStage, done: Done) -> ProxyStage:
    """A rung with `narrow:` searches the learning rate (and a searched batch setting) only within that factor
    of what the rungs before it predict for it: the fitted laws from 2 rungs on, else the fixed rules."""
    if stage.rung.narrow is None or not done:
        return stage
    placed = [(s, study, _scale(cfg, s)) for s, study in done]
    dest = _scale(cfg, stage)
    source, missed = _carried(placed)
    fitted, at_source, _ = _fitted(cfg, placed, dest, missed) if len(placed) >= 2 else ({}, {}, None)
    moved = _moved(cfg, placed[source], dest, 1, fitted, at_source)
    if not moved:
        return stage
    space = stage.cfg.search.space
    center = {k: v for k, v in moved[0][1].items() if k in space and k in _NARROWED}
    search = stage.cfg.search.model_copy(update={"space": narrowed_space(space, center, stage.rung.narrow)})
    return ProxyStage(stage.cfg.model_copy(update={"search": search}), stage.n_train, stage.rung)


_NARROWED = ("learning_rate", "gradient_accumulation_steps", "per_device_train_batch_size")


def plan_target(cfg: ExperimentConfig, done: Done) -> TargetStage:
    """Open the target study and queue its stage-2 trials: the baseline, then the last proxy stage's top-k moved
    to the target by the transfer rules (once each, so a resumed stage 2 does not queue them again). With
    `fit`, the first moved config takes the fitted laws' prediction for the target, the others move by the
    laws' ratio between the target and that rung; the fit is stored on the target study."""
    stages = _stages(cfg)
    last, last_study = done[-1]
    if not _top_k(last_study.optuna, 1):
        reasons = {TrialRecord(t).fail_reason or t.state.name.lower() for t in last_study.trials}
        raise LmtuneError(f"the proxy stage ({last_study.name}) has no completed trial to transfer; its trials "
                          f"ended with: {sorted(reasons)[:3]}")
    rules = stages.transfer
    placed = [(s, study, _scale(cfg, s)) for s, study in done]
    dest = _scale(cfg, None, last.n_train)
    source, missed = _carried(placed)
    fitted, at_source, fit_info = _fitted(cfg, placed, dest, missed)
    moved = _moved(cfg, placed[source], dest, rules.top_k, fitted, at_source)
    space = dict(cfg.search.space)
    local = rules.local_search
    if local is not None and moved:
        space = narrowed_space(space, moved[0][1], local.factor)
    target_cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"space": space})})
    target = open_tuning_study(target_cfg)
    if fit_info is not None:
        target.optuna.set_user_attr(records.TRANSFER_FIT, fit_info)
    target.enqueue_baseline()  # trial 0 of the target study, before the transferred configs
    queued = {t.user_attrs.get(records.TRANSFERRED_FROM) for t in target.trials}
    for t, params, overrides in moved:
        if t.number not in queued:
            target.optuna.enqueue_trial(params, user_attrs={records.TRANSFERRED_FROM: t.number,
                                                            records.OVERRIDES: overrides,
                                                            records.PROXY_VALUE: t.value})
    n_target = int(target.baseline is not None) + len(moved) + (local.n_trials if local else 0)
    # Stage 2 runs where the search would (here, local workers or Ray), with its own trial count and no budget.
    startup = target_cfg.search.n_startup_trials
    stage2 = target_cfg.search.model_copy(update={  # the startup trials the target study was opened with
        "n_trials": n_target, "budget": BudgetConfig(),
        "n_startup_trials": default_startup_trials(cfg.search.n_trials) if startup is None else startup})
    carried = placed[source][2]
    return TargetStage(target_cfg.model_copy(update={"search": stage2, "stages": None}), target,
                       carried.hidden / dest.hidden, dest.rows / carried.rows, 1.0 / carried.steps_fraction)


def record_stages(done: Done, target: TargetStage) -> None:
    """Store the transfer's ratios and every stage's cost on the target study."""
    target.study.optuna.set_user_attr(records.STAGES, _summary([study for _, study in done], target))


def _carried(placed: list[tuple[ProxyStage, Study, Scale]]) -> tuple[int, str]:
    """(the index of the stage whose top-k moves on, why it is not the last one or ""). A larger model trained on
    at least as many tokens reaches at least the loss of a smaller one at its optimum; a last rung whose best is
    worse than a smaller rung's did not find its optimum (its few trials, in a range narrowed around a
    prediction, missed it), so neither its trials nor a law leaning on them can be trusted: the best rung's
    top-k moves on by the fixed rules instead. On very short rungs two widths can be level at their optima
    (BENCHMARKS, B5 at 24 steps); the check then falls back on noise, to the fixed rules, which is safe."""
    *_, (_, last_study, last) = placed
    sign = -1.0 if records.maximizes(last_study.optuna) else 1.0
    best = [sign * top[0].value if (top := _top_k(study.optuna, 1)) else math.inf for _, study, _ in placed]
    smaller = [i for i, (_, _, s) in enumerate(placed[:-1])
               if s.n_params <= last.n_params and s.token_share <= last.token_share and best[i] < best[-1]]
    if not smaller:
        return len(placed) - 1, ""
    i = min(smaller, key=lambda k: best[k])
    name = placed[i][1].name
    return i, (f"the last rung ({last_study.name}) reached a worse best value ({sign * best[-1]:.4g}) than the "
               f"smaller rung {name} ({sign * best[i]:.4g}), so its search missed its optimum; {name}'s top "
               "configs move on by the fixed rules instead")


def _moved(cfg: ExperimentConfig, source: tuple[ProxyStage, Study, Scale], dest: Scale, k: int,
           fitted: dict[str, float], at_source: dict[str, float]) -> list[tuple[FrozenTrial, dict, dict]]:
    """The source stage's top-k moved to `dest`: (trial, searched params, training arguments outside the
    space). The fixed rules move what has no fitted value (a `fit` without one falls back to width / none)."""
    stage, study, scale = source
    rules = _stages(cfg).transfer
    fixed = rules.model_copy(update={
        "learning_rate": "width" if rules.learning_rate == "fit" else rules.learning_rate,
        "batch_size": "none" if rules.batch_size == "fit" else rules.batch_size})
    out = []
    for i, t in enumerate(_top_k(study.optuna, k)):
        params, overrides = transfer(dict(t.params), fixed, scale.hidden / dest.hidden, dest.rows / scale.rows,
                                     dest.steps_fraction / scale.steps_fraction,
                                     cfg.train.gradient_accumulation_steps)
        if "learning_rate" in fitted and "learning_rate" in params:
            params["learning_rate"] = fitted["learning_rate"] if i == 0 else \
                t.params["learning_rate"] * fitted["learning_rate"] / at_source["learning_rate"]
        if "batch_size" in fitted:
            hp = TrialRecord(t).trained_hparams
            per_device = int(hp.get("per_device_train_batch_size", cfg.train.per_device_train_batch_size))
            batch = fitted["batch_size"] if i == 0 else \
                _batch(t, stage.cfg) * fitted["batch_size"] / at_source["batch_size"]
            accumulation = max(1, round(batch / per_device))
            (params if "gradient_accumulation_steps" in params else overrides)[
                "gradient_accumulation_steps"] = accumulation
        out.append((t, params, overrides))
    return out


def _fitted(cfg: ExperimentConfig, placed: list[tuple[ProxyStage, Study, Scale]], dest: Scale, missed: str = ""
            ) -> tuple[dict[str, float], dict[str, float], dict[str, Any] | None]:
    """With `fit`: (the laws' predictions at `dest` that pass the uncertainty guard, their values at the last
    stage, what to store); the hyperparameters left out fall back to the fixed rules, each with its reason
    (`missed`: every one, for the reason `_carried` gave)."""
    rules = _stages(cfg).transfer
    names = [h for h in transfer_laws.HYPERPARAMETERS if getattr(rules, h) == "fit"]
    if not names:
        return {}, {}, None
    d_target = _target_tokens(cfg, placed)
    rows = [] if d_target is None else _fit_records(placed, d_target)
    rule = transfer_laws.fit(rows, names)
    d_target = d_target or 0.0
    at_dest = (float(dest.n_params), d_target * dest.token_share)
    last = placed[-1][2]
    at_last = (float(last.n_params), d_target * last.token_share)
    usable = rule.predict(*at_dest) if d_target else {}
    band = rule.band(*at_dest) if d_target else {}
    unsure = dict.fromkeys(usable, missed) if missed else \
        rule.unsure(*at_dest, rules.max_uncertainty) if d_target else {}
    used = {h: v for h, v in usable.items() if h not in unsure}
    info = {"rule": rule.to_dict(), "target": {"n_params": at_dest[0], "n_tokens": at_dest[1]},
            "stages": [{"study": study.name, "n_params": float(s.n_params), "n_tokens": d_target * s.token_share}
                       for _, study, s in placed],
            "prediction": {h: {"value": usable.get(h), "band": band.get(h), "used": h in used,
                               "fallback": "" if h in used else unsure.get(h) or rule.laws[h].reason or
                               "no proxy trial recorded its cost"} for h in names}}
    at_source = {h: v for h, v in rule.predict(*at_last).items() if h in used} if used else {}
    return used, at_source, info


def _fit_records(placed: list[tuple[ProxyStage, Study, Scale]], d_target: float) -> list[dict[str, float]]:
    """Every completed proxy trial as a record of `lmtune.transfer.fit` (its stage's size, its
    hyperparameters, its objective as a loss, and its searched categorical values as its group)."""
    rows = []
    for stage, study, scale in placed:
        sign = -1.0 if records.maximizes(study.optuna) else 1.0
        categorical = sorted(n for n, spec in stage.cfg.search.space.items() if spec.type == "categorical")
        for t in study.trials:
            if t.state != TrialState.COMPLETE or t.value is None or not math.isfinite(t.value):
                continue
            rows.append({"n_params": float(scale.n_params), "n_tokens": d_target * scale.token_share,
                         "learning_rate": float(TrialRecord(t).trained_hparams.get(
                             "learning_rate", stage.cfg.train.learning_rate)),
                         "batch_size": float(_batch(t, stage.cfg)), "loss": sign * t.value,
                         "group": repr([t.params.get(n) for n in categorical])})
    return rows


def _batch(t: FrozenTrial, cfg: ExperimentConfig) -> int:
    """The effective batch (sequences per optimizer step) a trial trained with."""
    hp = TrialRecord(t).trained_hparams
    return int(hp.get("per_device_train_batch_size", cfg.train.per_device_train_batch_size)) * int(
        hp.get("gradient_accumulation_steps", cfg.train.gradient_accumulation_steps))


def _target_tokens(cfg: ExperimentConfig, placed: list[tuple[ProxyStage, Study, Scale]]) -> float | None:
    """The training tokens of one target run at the config's batch size, read from what the proxy trials
    trained (each trial's full run, at the config's batch when the run length is in steps, over its stage's
    share): the median over every completed proxy trial."""
    base = cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps
    estimates = []
    for stage, study, scale in placed:
        for t in study.trials:
            c = TrialRecord(t).cost
            if t.state != TrialState.COMPLETE or not c.get("steps") or not c.get("tokens"):
                continue
            full = c["tokens"] * c.get("planned_steps", c["steps"]) / c["steps"]
            if cfg.train.max_steps > 0:  # a fixed number of steps: the tokens grow with the batch
                full *= base / _batch(t, stage.cfg)
            estimates.append(full / scale.token_share)
    return statistics.median(estimates) if estimates else None


def _scale(cfg: ExperimentConfig, stage: ProxyStage | None, n_train: int | None = None) -> Scale:
    """A proxy stage's scale, or the target's (`stage` None, with its training rows)."""
    model_cfg = (stage.cfg if stage else cfg).model
    trust = model_cfg.trust_remote_code
    config = AutoConfig.from_pretrained(resolve_path(model_cfg), trust_remote_code=trust)
    with torch.device("meta"):  # counted without allocating the weights
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
            config, trust_remote_code=trust).parameters())
    if stage is None:
        return Scale(n_params, int(config.hidden_size), int(n_train or 1), 1.0, 1.0)
    r = stage.rung
    share = r.steps_fraction * (r.data_fraction if cfg.train.max_steps <= 0 else 1.0)  # epochs: fewer rows too
    return Scale(n_params, int(config.hidden_size), stage.cfg.data.max_train_samples or stage.n_train,
                 r.steps_fraction, share)


def _top_k(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in ranked_trials(study) if not TrialRecord(t).is_baseline][:k]


def _summary(proxies: list[Study], target: TargetStage) -> dict[str, Any]:
    """Every stage's cost in target full-training equivalents, by training FLOPs."""
    costs = [TrialRecord(t).cost for t in target.study.trials if t.state == TrialState.COMPLETE]
    full = [c for c in costs if c.get("steps")]
    per_full = statistics.fmean(c["flops"] / c["steps"] * c["planned_steps"] for c in full) if full else None

    def fte(trials: list[FrozenTrial]) -> float | None:
        return sum(TrialRecord(t).cost.get("flops", 0.0) for t in trials) / per_full if per_full else None

    rungs = [{"study": p.name, "trials": len(p.trials), "fte_target": fte(p.trials)} for p in proxies]
    proxy_fte = sum(r["fte_target"] for r in rungs) if per_full else None  # type: ignore[misc]
    return {"proxy_study": proxies[-1].name, "proxy_trials": sum(r["trials"] for r in rungs),
            **({"rungs": rungs} if len(rungs) > 1 else {}), "width_ratio": target.width_ratio,
            "data_ratio": target.data_ratio, "steps_ratio": target.steps_ratio,
            "proxy_fte_target": proxy_fte, "target_fte": fte(target.study.trials)}


def _stages(cfg: ExperimentConfig) -> StagesConfig:
    if cfg.stages is None:
        raise ValueError("the config has no stages: section")
    return cfg.stages
