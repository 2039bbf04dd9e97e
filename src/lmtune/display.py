"""What the terminal shows of a study: trial tables, the live display of `lmtune run`, and plain log lines.

On a terminal `lmtune run` shows a bar per budget that can end the study (trials, FTE, device-hours, timeout),
a bar for the trial that is training, and the best trials so far, refreshed in place. Piped into a file or a
CI log it prints one plain line per finished trial instead; `--quiet` prints neither.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lmtune.config import ExperimentConfig
from lmtune.errors import LmtuneError
from lmtune.records import StudyRecord, TrialRecord
from lmtune.results import (
    best_trial,
    fmt,
    is_active,
    load_study,
    pareto_front,
    pbt_members,
    ranked_trials,
    searched_space,
    study_cost,
    study_limits,
    trial_status,
)
from lmtune.train.metrics import shown_metrics

BEST_ROWS = 10


def trials_table(study: optuna.Study, limit: int | None = None, title: str | None = None,
                 best_first: bool = False) -> Table:
    """Finished trials with their metrics, cost and parameters: all (or the last `limit`) in order, or with
    `best_first` the `limit` best completed ones."""
    metric = StudyRecord(study).metric
    if best_first:
        trials = ranked_trials(study)[:limit]
    else:
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        trials = trials[-limit:] if limit is not None else trials
    best = best_trial(study)
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    space = searched_space(study)
    table = Table(title=title, show_lines=False)
    metric_cols = list(dict.fromkeys((metric, *(n for n, _ in StudyRecord(study).objectives), "eval_loss")))
    for col in ("#", "state", *metric_cols, "FTE", "s", *params):
        table.add_column(col, overflow="fold")
    for t in trials:
        state = t.state.name.lower() + (" (baseline)" if TrialRecord(t).is_baseline else "")
        reason = trial_reason(t)
        if reason:
            state += f": {reason[:80]}"
        if not TrialRecord(t).feasible:
            state += " (infeasible)"
        style = "bold green" if best is not None and t.number == best.number else None
        c = TrialRecord(t).cost
        values = _trained_values(t, params, space)
        table.add_row(str(t.number), state, *(fmt(TrialRecord(t).measure(k)) for k in metric_cols), fmt(c.get("fte")),
                      fmt(c.get("wall_seconds"), 3), *(fmt(values.get(p), 3) for p in params), style=style)
    return table


def front_table(study: optuna.Study) -> Table:
    """The Pareto front: each point's objectives, constrained metrics and parameters; the picked point marked."""
    stored = StudyRecord(study)
    objectives = [f"{n} ({'max' if up else 'min'})" for n, up in stored.objectives]
    limits = study_limits(study)
    front = pareto_front(study)
    picked = (stored.picked or {}).get("trial")
    params = list(dict.fromkeys(k for t in front for k in t.params))
    space = searched_space(study)
    table = Table(title=f"Pareto front of study {study.study_name}: {len(front)} feasible trial"
                        f"{'s' if len(front) != 1 else ''} no other beats on every objective")
    for col in ("#", *objectives, *(f"[{c.text}]" for c in limits), *params):
        table.add_column(col, overflow="fold")
    for t in front:
        values = _trained_values(t, params, space)
        name = f"{t.number}" + (" (baseline)" if TrialRecord(t).is_baseline else "") + (
            " *picked*" if t.number == picked else "")
        measured = [TrialRecord(t).measure(c.metric) for c in limits]
        table.add_row(name, *(fmt(v) for v in t.values), *(fmt(v) for v in measured),
                      *(fmt(values.get(p), 3) for p in params), style="bold green" if t.number == picked else None)
    return table


def trial_reason(t: FrozenTrial) -> str:
    """Why a trial failed, or why a pruned one diverged; empty for the rest."""
    if t.state == TrialState.FAIL:
        return TrialRecord(t).fail_reason
    return TrialRecord(t).prune_reason if t.state == TrialState.PRUNED else ""


def _trained_values(t: FrozenTrial, names: list[str], space: dict[str, Any]) -> dict[str, Any]:
    """The values of `names` the trial trained with: a baseline value outside the space is no Optuna param,
    and an out-of-memory retry changed the batch settings, so the training arguments have the last word;
    a conditional parameter the trial did not use (momentum with adamw) is left out."""
    hparams = (TrialRecord(t).hparams or {})
    values = {**t.params, **{p: v for p, v in hparams.items() if p in names}}
    context = {**hparams, **values}  # a condition on a fixed value (no Optuna param) reads the training argument
    return {k: v for k, v in values.items() if is_active(space, k, context)}


def log_trial(console: Console) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback printing one plain line per finished trial, for logs and pipes."""

    studies: list[str] = []

    def log(study: optuna.Study, trial: FrozenTrial) -> None:
        if studies[-1:] != [study.study_name]:  # proxy tuning runs a study per stage, each numbering from 0
            studies.append(study.study_name)
            console.print(f"study {study.study_name}:", highlight=False)
        m = TrialRecord(trial).metrics
        extra = trial_reason(trial) or json.dumps({k: round(m[k], 4) for k in shown_metrics() if k in m})
        objectives = " ".join(f"{n}={fmt(TrialRecord(trial).measure(n))}" for n, _ in StudyRecord(study).objectives)
        space = searched_space(study)
        values = _trained_values(trial, [*trial.params, *space], space)
        params = " ".join(f"{k}={fmt(v)}" for k, v in values.items())
        infeasible = "" if TrialRecord(trial).feasible else " (infeasible)"
        console.print(f"trial {trial.number} {trial_status(trial)}{infeasible}: {objectives} {params} {extra}",
                      highlight=False, soft_wrap=True)

    return log


@dataclass
class Budget:
    """One limit that can end the study, and how much of it is used."""

    name: str
    total: float
    unit: str = ""

    def amount(self, used: float) -> str:
        if self.name == "trials":
            return f"{int(used)}/{int(self.total)}"
        return f"{used:.3g}/{self.total:.3g}{self.unit}"


def budgets(cfg: ExperimentConfig) -> list[Budget]:
    """The budgets this run stops at, in the order they are shown."""
    search = cfg.search
    out = []
    if search.strategy == "pbt":  # a PBT study is its population (and the baseline trial before it)
        out.append(Budget("trials", search.pbt.population_size + int(search.baseline)))
    elif search.n_trials is not None:
        out.append(Budget("trials", search.n_trials))
    if search.budget.fte is not None:
        out.append(Budget("FTE", search.budget.fte))
    if search.budget.device_hours is not None:
        out.append(Budget("device-hours", search.budget.device_hours, " h"))
    if search.timeout is not None:
        out.append(Budget("time", search.timeout, " s"))
    return out


class LiveDisplay:
    """Budget bars, the current trial's bar and the best trials so far, refreshed in place.

    Driven by the trial runner's progress hook (`on_step`) and the study's trial callback (`on_trial_end`);
    `renderable()` is what is on screen, so a test can print it to a recording console.
    """

    def __init__(self, cfg: ExperimentConfig, console: Console, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.clock = cfg, clock
        self.start = clock()
        self.study: optuna.Study | None = None
        self.spent = study_cost([])  # by the study's finished trials, resumed runs included
        self.budgets = budgets(cfg)
        self.progress = Progress(TextColumn("{task.description:>18}"), BarColumn(),
                                 TextColumn("{task.fields[amount]:>14}"), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=console)
        self.budget_tasks: list[TaskID] = [self.progress.add_task(b.name, total=b.total, amount=b.amount(0),
                                                                  info="")
                                           for b in self.budgets]
        self.trial_task = self.progress.add_task("waiting", total=None, amount="", info="")
        self.trial_started = self.clock()
        self.last_step = 0
        self.stepped, self.polled_at = False, -math.inf
        self.segments = 0
        self.table: RenderableType = Text("no finished trial yet", style="dim")
        self.live = Live(self, console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> LiveDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)  # type: ignore[arg-type]

    def renderable(self) -> Group:
        self._poll_running()
        return Group(self.progress, self.table)

    def __rich__(self) -> Group:  # Live re-renders this on every refresh
        return self.renderable()

    # ------------------------------------------------------------------------------------------------ hooks
    def on_step(self, step: int, total: int, loss: float) -> None:
        """Every optimizer step of the training run in progress."""
        if self._new_run(step):
            self.trial_started = self.clock()
            self.progress.reset(self.trial_task, total=total, description=self._running_label())
        self.last_step, self.stepped = step, True
        self.progress.update(self.trial_task, completed=step, total=total, amount=f"{step}/{total} steps",
                             info=f"loss {loss:.3f}")
        self._update_budgets(current=(step / max(total, 1), self.clock() - self.trial_started))

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._set_study(study)
        self.last_step, self.stepped = 0, False  # the next trial may train elsewhere (PBT after its baseline)
        self._update_budgets()
        counts = Counter(trial_status(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished())
        ranked = ranked_trials(study)
        title = (f"best {min(len(ranked), BEST_ROWS)} of {sum(counts.values())} finished trials "
                 f"({', '.join(f'{n} {s}' for s, n in counts.most_common())}); "
                 f"last: trial {trial.number} {trial_status(trial)}")
        self.table = trials_table(study, limit=BEST_ROWS, title=title, best_first=True)
        self.live.refresh()

    # ------------------------------------------------------------------------------------------------ state
    def _poll_running(self) -> None:
        """Trials that train in other processes (`--workers`, Ray, PBT workers) send no steps here: once a
        second, show the running trials and the last step each reported to storage instead. Once a step has
        come in, training happens here and the steps drive the bar."""
        now = self.clock()
        if self.stepped or now - self.polled_at < 1:
            return
        self.polled_at = now
        study = self._study()
        if study is None:
            return
        try:  # on rich's refresh thread: an error here would end the display's refreshing silently
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except Exception:  # the database busy or restarting: the next poll tries again
            return
        if not running:
            self.progress.update(self.trial_task, description="waiting", amount="", info="")
            return
        steps = ", ".join(f"trial {t.number} step {max(t.intermediate_values, default=0)}" for t in running[:6])
        self.progress.update(self.trial_task, total=None, description="running",
                             amount=f"{len(running)} trial{'s' * (len(running) > 1)}",
                             info=steps + (", ..." if len(running) > 6 else ""))
        self._update_budgets()

    def _update_budgets(self, current: tuple[float, float] = (0.0, 0.0)) -> None:
        """Spent budget: the finished trials' plus the running trial's share so far."""
        fte_now, seconds_now = current
        cost = self.spent
        used = {"trials": cost["trials"], "FTE": cost["fte"] + fte_now,
                "device-hours": (cost["wall_seconds"] + seconds_now) / 3600, "time": self.clock() - self.start}
        for b, task in zip(self.budgets, self.budget_tasks, strict=True):
            self.progress.update(task, completed=min(used[b.name], b.total), amount=b.amount(used[b.name]))

    def _new_run(self, step: int) -> bool:
        """A new trial starts at step 1; a PBT member's next segment right after a multiple of segment_steps."""
        if step == 1 or step <= self.last_step:
            return True
        seg = self.cfg.search.pbt.segment_steps
        return self.cfg.search.strategy == "pbt" and (step - 1) % seg == 0 and bool(self._members())

    def _running_label(self) -> str:
        """`trial N` for the trial now training, read from storage. PBT trains its members' segments in member
        order, so the n-th segment started is member n modulo the population."""
        members = self._members()
        if members:
            m = members[self.segments % len(members)]
            self.segments += 1
            return f"trial {m.number} (member {TrialRecord(m).pbt_member})"
        study = self._study()
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if study else []
        if not running:
            return "trial"
        return f"trial {running[-1].number}" + (" (baseline)" if TrialRecord(running[-1]).is_baseline else "")

    def _members(self) -> list[FrozenTrial]:
        study = self._study()
        return pbt_members(study) if study else []

    def _study(self) -> optuna.Study | None:
        """The study being run: known from the first finished trial, read from storage before that."""
        if self.study is None:
            try:
                self._set_study(load_study(self.cfg.storage, self.cfg.study_name))
            except LmtuneError:  # not created yet, or an in-memory storage this process cannot reopen
                return None
        return self.study

    def _set_study(self, study: optuna.Study) -> None:
        self.study = study
        self.spent = study_cost(study.get_trials(deepcopy=False))
