from __future__ import annotations

import math
import random
import shutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from lmtune import records
from lmtune.config import ParamSpec
from lmtune.space import SearchSpace


@dataclass
class SegmentJob:
    """Train one member from `checkpoint_in` (None: from scratch) up to `until_step`, save to `checkpoint_out`.

    The checkpoint was written with `checkpoint_params`; the member now trains with `params` (they differ
    after an exploit/explore). `evaluate_first` asks for an evaluation right after loading, before training.
    """

    member: int
    params: dict[str, Any]
    checkpoint_params: dict[str, Any]
    checkpoint_in: Path | None
    checkpoint_out: Path
    until_step: int
    evaluate_first: bool = False


@dataclass
class SegmentResult:
    metrics: dict[str, float]
    steps: int  # optimizer steps trained in this segment
    planned_steps: int  # steps of a full-length run
    tokens: int
    train_seconds: float
    wall_seconds: float
    metrics_before: dict[str, float] | None = None
    diverged: str | None = None  # why the loss became NaN/inf: the member stops there, no checkpoint written


@dataclass
class Member:
    id: int
    trial: optuna.Trial
    params: dict[str, Any]
    checkpoint: Path | None = None
    checkpoint_params: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    schedule: list[dict[str, Any]] = field(default_factory=list)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=lambda: {"steps": 0, "tokens": 0, "train_seconds": 0.0,
                                                            "wall_seconds": 0.0, "fte": 0.0})
    copied_now: bool = False
    diverged: str | None = None


RunSegments = Callable[[list[SegmentJob]], Iterable[SegmentResult]]


class PopulationBasedTraining:
    """Population-based training (Jaderberg et al. 2017, "Population Based Training of Neural Networks").

    A population of ``population_size`` members trains in segments of ``segment_steps`` optimizer steps.
    After each segment the members are ranked on the objective; each member in the bottom ``quantile``
    *exploits* a random member of the top ``quantile`` — it takes over that member's real weights, optimizer
    and scheduler state from its checkpoint — and then *explores*: every searched hyperparameter that can change
    during a run is resampled from the space with probability ``resample_probability``, otherwise multiplied by
    a random factor from ``perturb_factors`` (clipped to the space). Hyperparameters that cannot change during a
    run (optimizer type, batch size, LoRA shape) are inherited from the donor. The result is a hyperparameter
    *schedule* per member, recorded with its lineage, and the final best member's model.

    Checkpoints are written per member and deleted as soon as no member needs them, so disk use stays at
    about two checkpoints per member.

    Example::

        pbt = PopulationBasedTraining(SearchSpace({"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}),
                                      mutable=("learning_rate",), population_size=4, segment_steps=50)
        members = pbt.run(optuna_study, run_segments, workdir=Path("pbt"), metric="eval_loss", maximize=False)
    """

    def __init__(self, space: SearchSpace, mutable: Iterable[str], population_size: int = 8,
                 segment_steps: int = 50, quantile: float = 0.25, resample_probability: float = 0.25,
                 perturb_factors: Iterable[float] = (0.8, 1.2), seed: int | None = 0):
        self.space, self.mutable = space, set(mutable)
        self.population_size, self.segment_steps = population_size, segment_steps
        self.quantile, self.resample_probability = quantile, resample_probability
        self.perturb_factors = list(perturb_factors)
        self.rng = random.Random(seed)

    def run(self, study: optuna.Study, run_segments: RunSegments, workdir: Path, metric: str,
            maximize: bool) -> list[Member]:
        members = []
        for i in range(self.population_size):
            with warnings.catch_warnings():  # heartbeats are for optimize(); members report every segment
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            trial.set_user_attr(records.PBT_MEMBER, i)
            params = self.space.suggest(trial)
            members.append(Member(i, trial, params, schedule=[{"step": 0, **params}]))
        total: int | None = None
        active = list(members)  # a member whose loss diverges stops; the others go on without it
        while active and (total is None or active[0].step < total):
            until = active[0].step + self.segment_steps if total is None else min(
                active[0].step + self.segment_steps, total)
            jobs = [SegmentJob(m.id, m.params, m.checkpoint_params, m.checkpoint,
                               workdir / f"member-{m.id}" / f"step-{until}", until, m.copied_now) for m in active]
            for m, job, res in zip(active, jobs, run_segments(jobs), strict=True):
                total = res.planned_steps
                if res.diverged:
                    self._stop_diverged(study, m, res)
                else:
                    self._record_segment(m, job, res, metric, total)
            active = [m for m in active if not m.diverged]
            self._delete_unused(members, workdir)
            if not active or active[0].step >= total:
                break
            self._exploit_and_explore(active, maximize)
        for m in active:
            self._finish(study, m)
        self._delete_unused(members, workdir)
        return members

    def _record_segment(self, m: Member, job: SegmentJob, res: SegmentResult, metric: str, total: int) -> None:
        if job.evaluate_first and res.metrics_before is not None:
            m.lineage[-1]["score_after_copy"] = res.metrics_before[metric]
        m.checkpoint, m.checkpoint_params, m.copied_now = job.checkpoint_out, dict(m.params), False
        m.step, m.metrics, m.score = job.until_step, res.metrics, res.metrics[metric]
        for key in ("steps", "tokens", "train_seconds", "wall_seconds"):
            m.cost[key] += getattr(res, key)
        m.cost["planned_steps"] = total
        m.cost["fte"] = m.cost["steps"] / max(total, 1)
        m.curve.append({**res.metrics, "step": float(m.step)})
        if math.isfinite(m.score):
            m.trial.report(m.score, m.step)
        m.trial.set_user_attr(records.CURVE, m.curve)
        m.trial.set_user_attr(records.COST, m.cost)

    @staticmethod
    def _stop_diverged(study: optuna.Study, m: Member, res: SegmentResult) -> None:
        """Pruned with stop_reason "diverged", as an ordinary trial whose loss diverges; it leaves no score."""
        m.diverged, m.score = res.diverged, None
        for key in ("steps", "tokens", "train_seconds", "wall_seconds"):
            m.cost[key] += getattr(res, key)
        m.cost["fte"] = m.cost["steps"] / max(res.planned_steps, 1)
        for key, value in ((records.COST, m.cost), (records.SCHEDULE, m.schedule), (records.LINEAGE, m.lineage),
                           (records.STOP_REASON, "diverged"), (records.PRUNE_REASON, res.diverged)):
            m.trial.set_user_attr(key, value)
        study.tell(m.trial, state=optuna.trial.TrialState.PRUNED)

    def _exploit_and_explore(self, members: list[Member], maximize: bool) -> None:
        def rank_key(m: Member) -> float:
            s = m.score if m.score is not None and math.isfinite(m.score) else -math.inf if maximize else math.inf
            return -s if maximize else s

        ranked = sorted(members, key=rank_key)  # best first
        n = max(1, int(self.quantile * len(members)))
        top, bottom = ranked[:n], ranked[-n:]
        for receiver in bottom:
            donor = self.rng.choice(top)
            receiver.lineage.append({"step": donor.step, "copied_from": donor.id, "donor_score": donor.score,
                                     "replaced_score": receiver.score})
            receiver.checkpoint, receiver.checkpoint_params = donor.checkpoint, dict(donor.checkpoint_params)
            receiver.params = self.explore(donor.params)
            receiver.copied_now = True
            receiver.schedule.append({"step": donor.step, **receiver.params})
            receiver.trial.set_user_attr(records.LINEAGE, receiver.lineage)
            receiver.trial.set_user_attr(records.SCHEDULE, receiver.schedule)

    def explore(self, params: dict[str, Any]) -> dict[str, Any]:
        """Perturb or resample each mutable hyperparameter; the others are kept."""
        out = dict(params)
        for name, value in params.items():
            spec = self.space.params.get(name)
            if spec is None or name not in self.mutable or spec.type == "fixed":
                continue
            if self.rng.random() < self.resample_probability:
                out[name] = self._resample(spec)
            elif spec.type in ("float", "int") and not spec.values:
                out[name] = self._perturb(spec, value)
        return out

    def _perturb(self, spec: ParamSpec, value: float) -> float | int:
        assert spec.low is not None and spec.high is not None
        new = min(max(value * self.rng.choice(self.perturb_factors), spec.low), spec.high)
        return int(round(new)) if spec.type == "int" else new

    def _resample(self, spec: ParamSpec) -> Any:
        if spec.type == "categorical":
            return self.rng.choice(spec.choices or [])
        if spec.values:
            return self.rng.choice(spec.values)
        assert spec.low is not None and spec.high is not None
        if spec.log:
            x = math.exp(self.rng.uniform(math.log(spec.low), math.log(spec.high)))
        else:
            x = self.rng.uniform(spec.low, spec.high)
        return int(round(x)) if spec.type == "int" else x

    def _finish(self, study: optuna.Study, m: Member) -> None:
        m.trial.set_user_attr(records.SCHEDULE, m.schedule)
        m.trial.set_user_attr(records.LINEAGE, m.lineage)
        m.trial.set_user_attr(records.METRICS, m.metrics)
        m.trial.set_user_attr(records.HPARAMS_FINAL, m.params)
        if m.checkpoint is not None:
            m.trial.set_user_attr(records.CHECKPOINT, str(m.checkpoint))
        ok = m.score is not None and math.isfinite(m.score)
        if ok:
            study.tell(m.trial, m.score)
        else:
            m.trial.set_user_attr(records.FAIL_REASON, f"final score is {m.score}")
            study.tell(m.trial, state=optuna.trial.TrialState.FAIL)

    @staticmethod
    def _delete_unused(members: list[Member], workdir: Path) -> None:
        keep = {m.checkpoint.resolve() for m in members if m.checkpoint is not None}
        for ckpt in workdir.glob("member-*/step-*"):
            if ckpt.resolve() not in keep:
                shutil.rmtree(ckpt, ignore_errors=True)
