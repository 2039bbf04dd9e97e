"""The stored-trial contract: every attribute lmtune keeps on an Optuna trial or study, named once.

A study database outlives the code that wrote it: `lmtune status/best/report`, tracking and exports read studies
written by earlier versions. So a key here is never renamed; a new one is added with what it holds. Writers use
the constants (`trial.set_user_attr(COST, ...)`); readers go through `TrialRecord` and `StudyRecord`, which give
each attribute its type and its default when absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

# ------------------------------------------------------------------------------------ trial user attributes
# What whoever queued a trial attached for it to run with (a re-queued trial keeps these).
BASELINE = "baseline"  # True on the baseline trial: the config's train: values, trial 0 of a study
OVERRIDES = "overrides"  # training arguments outside the search space an enqueued trial runs with
TRANSFERRED_FROM = "transferred_from"  # proxy tuning: the proxy trial a target trial was transferred from
PROXY_VALUE = "proxy_value"  # proxy tuning: that proxy trial's objective value
QUEUED_INPUTS = (BASELINE, OVERRIDES, TRANSFERRED_FROM, PROXY_VALUE)

# What a trial produced.
HPARAMS = "hparams"  # every training argument the run used (a fitted OOM retry's batch settings included)
METRICS = "metrics"  # final metrics, {name: value} (validation split; `tokens_per_second`, ...)
CURVE = "curve"  # the evaluations in order: [{"step": optimizer step, metric: value, ...}]
COST = "cost"  # {steps, planned_steps, tokens, flops, train_seconds, wall_seconds, fte}
FAIL_REASON = "fail_reason"  # why a failed trial failed ("oom: ...", "interrupted ...", "TypeError: ...")
SETUP_FAILURE = "setup_failure"  # True: it failed on the study's data, model or objective, not its parameters
STOP_REASON = "stop_reason"  # why a run ended early: "early_stopping", "pruned", "diverged", "report"
PRUNE_REASON = "prune_reason"  # a diverged trial's loss and step
OOM_ATTEMPTS = "oom_attempts"  # [{per_device_train_batch_size, gradient_accumulation_steps, error}]
WORKER = "worker"  # host:pid (or ray:host:pid) of the process that trained it
CUDA_VISIBLE_DEVICES = "cuda_visible_devices"  # the GPUs a local worker gave it

# Population-based training members.
PBT_MEMBER = "pbt_member"  # the member's index in the population
SCHEDULE = "schedule"  # [{"step": s, hyperparameter: value, ...}]: the values it trained with from step s
LINEAGE = "lineage"  # [{"step": s, "from_member": m, ...}]: whose weights it copied, when
HPARAMS_FINAL = "hparams_final"  # the member's hyperparameters at the end of its schedule
CHECKPOINT = "checkpoint"  # the member's last checkpoint folder (removed once the population is done)

# ------------------------------------------------------------------------------------ trial system attributes
REQUEUED_FROM = "requeued_from"  # numbers of the cut-short trials a re-queued trial replaces
PRIOR_SOURCE = "prior_source"  # where auto's prior sampler drew a trial: "prior", "incumbent", "uniform" or "model"
# Optuna's own, read through `FrozenTrial.constraints` (TrialRecord.feasible), never by key here:
# `trial.set_constraint(text, violation)` stores "constraints:<text>" (e.g. "constraints:flops <= 1e+12"), a float
# that is <= 0 when the objective.constraints entry holds; samplers and best_trial(s) read it.

# ------------------------------------------------------------------------------------ study user attributes
STUDY_METRIC = "metric"  # the objective metric's name (a multi-objective study's first objective)
OBJECTIVES = "objectives"  # multi-objective: [{"name": metric, "direction": "maximize"|"minimize"}], in order
PICKED = "picked"  # {trial, rule}: the point `lmtune best --pick RULE` chose; best.yaml and export use it
STUDY_STRATEGY = "strategy"  # search.strategy the study was created with
CONFIG = "config"  # the experiment config (password removed), as JSON
FINGERPRINT = "fingerprint"  # what makes trials comparable (ExperimentConfig.fingerprint); a resume must match
BEST_MODEL = "best_model"  # {trial, dir, metrics, selected?}: the one model kept on disk
SELECTION = "selection"  # the selection phase's result: candidates, winner, flags, failed
STAGES = "stages"  # proxy tuning: ratios and every stage's cost ({"rungs": [...]} for a ladder)
TRANSFER_FIT = "transfer_fit"  # a ladder's fitted laws: {rule: lmtune.transfer.Rule.to_dict(), target: {n_params,
# n_tokens}, stages: [{study, n_params, n_tokens}], prediction: {hp: {value, band, used, fallback}}}
PBT = "pbt"  # {best_member, best_trial, best_model_dir}


def _read(attrs: dict[str, Any], key: str, default: Any = None) -> Any:
    """An attribute, or `default` when it is absent or stored as null (a cleared selection)."""
    value = attrs.get(key)
    return default if value is None else value


@dataclass(frozen=True)
class TrialRecord:
    """What lmtune stored on one trial, typed, with the defaults an older or a user-objective trial implies."""

    trial: FrozenTrial

    def _get(self, key: str, default: Any = None) -> Any:
        return _read(self.trial.user_attrs, key, default)

    @property
    def is_baseline(self) -> bool:
        return bool(self._get(BASELINE, False))

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self._get(METRICS, {}))

    @property
    def cost(self) -> dict[str, float]:
        return dict(self._get(COST, {}))

    @property
    def curve(self) -> list[dict[str, float]]:
        return list(self._get(CURVE, []))

    @property
    def hparams(self) -> dict[str, Any] | None:
        return self._get(HPARAMS)

    @property
    def fail_reason(self) -> str:
        return str(self._get(FAIL_REASON, ""))

    @property
    def setup_failure(self) -> bool:
        return bool(self._get(SETUP_FAILURE, False))

    @property
    def stop_reason(self) -> str:
        return str(self._get(STOP_REASON, ""))

    @property
    def prune_reason(self) -> str:
        return str(self._get(PRUNE_REASON, ""))

    @property
    def pbt_member(self) -> int | None:
        return self._get(PBT_MEMBER)

    @property
    def schedule(self) -> list[dict[str, Any]]:
        return list(self._get(SCHEDULE, []))

    @property
    def lineage(self) -> list[dict[str, Any]]:
        return list(self._get(LINEAGE, []))

    @property
    def value(self) -> float | None:
        """The objective value, a multi-objective trial's first (Optuna's `value` raises for those)."""
        values = self.trial.values
        return float(values[0]) if values else None

    def measure(self, name: str) -> float | None:
        """A metric of the final evaluation, else a cost figure (`fte`, `flops`, ...): what objectives, constraints
        and picks read."""
        value = self.metrics.get(name, self.cost.get(name))
        return None if value is None else float(value)

    @property
    def feasible(self) -> bool:
        """Every objective.constraints limit held (Optuna's rule: every constraint value <= 0)."""
        return all(v <= 0 for v in self.trial.constraints.values())

    @property
    def trained_hparams(self) -> dict[str, Any]:
        """The training arguments the trial ran with. A PBT member's model comes from a schedule: like Ray
        Tune, report its final values (the schedule is kept beside them)."""
        return dict(self._get(HPARAMS) or self._get(HPARAMS_FINAL) or self.trial.params)


def maximizes(study: optuna.Study) -> bool:
    """Whether the study's (first) objective is maximized: the one place an Optuna direction is read."""
    return study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


@dataclass(frozen=True)
class StudyRecord:
    """What lmtune stored on a study."""

    study: optuna.Study

    def _get(self, key: str, default: Any = None) -> Any:
        return _read(self.study.user_attrs, key, default)

    @property
    def metric(self) -> str:
        return str(self._get(STUDY_METRIC, "value"))

    @property
    def strategy(self) -> str | None:
        return self._get(STUDY_STRATEGY)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._get(CONFIG, {}))

    @property
    def best_model(self) -> dict[str, Any]:
        return dict(self._get(BEST_MODEL, {}))

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        return self._get(FINGERPRINT)

    @property
    def selection(self) -> dict[str, Any] | None:
        return self._get(SELECTION) or None

    @property
    def stages(self) -> dict[str, Any] | None:
        return self._get(STAGES)

    @property
    def proxy_rungs(self) -> list[dict[str, Any]]:
        """Each proxy stage's {study, trials, fte_target} in the order they ran: a ladder stores them under
        "rungs", a single proxy only as the stage totals (proxy_study, proxy_trials, proxy_fte_target)."""
        stages = self.stages
        if not stages:
            return []
        return stages.get("rungs") or [{"study": stages.get("proxy_study"), "trials": stages.get("proxy_trials"),
                                        "fte_target": stages.get("proxy_fte_target")}]

    @property
    def transfer_fit(self) -> dict[str, Any] | None:
        return self._get(TRANSFER_FIT)

    @property
    def pbt(self) -> dict[str, Any]:
        return dict(self._get(PBT, {}))

    @property
    def objectives(self) -> list[tuple[str, bool]]:
        """(metric, maximize) for each objective, in the order of the trials' values."""
        stored = self._get(OBJECTIVES)
        if stored:
            return [(str(o["name"]), o["direction"] == "maximize") for o in stored]
        return [(self.metric, self.maximize)]

    @property
    def multi_objective(self) -> bool:
        return len(self.study.directions) > 1

    @property
    def picked(self) -> dict[str, Any] | None:
        return self._get(PICKED) or None

    @property
    def maximize(self) -> bool:
        """The direction of the (first) objective."""
        return maximizes(self.study)
