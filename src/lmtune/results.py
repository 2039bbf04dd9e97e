"""Reading a finished (or running) study: trial rows, cost, the baseline-vs-best comparison, the best config.

Pure functions over Optuna's frozen trials, so the CLI, the Python API and later the report share them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune.config import SEARCHABLE
from lmtune.errors import ConfigError
from lmtune.objectives import Condition, PickRule, parse_condition
from lmtune.records import PICKED, StudyRecord, TrialRecord
from lmtune.storage import mask_url, open_storage
from lmtune.train.metrics import METRICS, shown_metrics
from lmtune.transfer import Rule


def load_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """An existing study; with no name, the only study in the storage."""
    store = open_storage(storage, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if study_name is None:
        if len(names) != 1:
            found = f"it holds {names}" if names else "it holds no study"
            raise ConfigError(f"which study? {mask_url(storage)}: {found}; pass --study NAME or the config file")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"no study {study_name!r} in {mask_url(storage)}; it holds {names or 'no study'}")
    return optuna.load_study(study_name=study_name, storage=store)


def fmt(v: Any, digits: int = 4) -> str:
    """A value as tables show it: floats to `digits` significant digits, a missing value as a dash."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _rankable(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials with finite values that meet every objective.constraints limit."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and all(math.isfinite(v) for v in t.values) and TrialRecord(t).feasible]


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible completed trials, best first: by the objective (ties: the earlier trial first); with several
    objectives the Pareto front first, each group by the first objective. Infeasible trials are left out."""
    done = _rankable(study)
    sign = -1 if StudyRecord(study).maximize else 1
    front = {t.number for t in pareto_front(study)} if StudyRecord(study).multi_objective else set()
    return sorted(done, key=lambda t: (t.number not in front, sign * t.values[0], t.number))


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible completed trials no other feasible trial beats on every objective (Optuna's `best_trials`,
    which leaves infeasible trials out), ordered by the first objective, best first."""
    sign = -1 if StudyRecord(study).maximize else 1
    front = [t for t in study.best_trials if all(math.isfinite(v) for v in t.values)]
    return sorted(front, key=lambda t: (sign * t.values[0], t.number))


def pick_trial(study: optuna.Study, rule: PickRule) -> FrozenTrial:
    """The feasible completed trial that meets every condition of `rule` and is best on its goal (default: the
    first objective); ties go to a Pareto point, then to the first objective, then to the earlier trial."""
    done = ranked_trials(study)  # the order breaks ties
    if not done:
        raise ConfigError(f"study {study.study_name!r} has no feasible completed trial to pick from")
    for c in rule.conditions:
        done_before = done
        done = [t for t in done if c.holds(TrialRecord(t).measure(c.metric))]
        if not done:
            seen = [v for t in done_before if (v := TrialRecord(t).measure(c.metric)) is not None]
            closest = (max(seen) if c.op == ">=" else min(seen)) if seen else None
            raise ConfigError(f"no trial meets {c.text!r}" + (f" (the closest has {c.metric} = {closest:.4g})"
                                                               if closest is not None else
                                                               f": no trial measured {c.metric}")
                              + "; loosen the limit")
    goal = rule.goal
    if goal is None:
        return done[0]
    measured = [t for t in done if TrialRecord(t).measure(goal.name) is not None]
    if not measured:
        raise ConfigError(f"--pick {rule.text!r}: no trial measured {goal.name!r}")
    sign = -1 if goal.maximize else 1
    return min(measured, key=lambda t: sign * (TrialRecord(t).measure(goal.name) or 0.0))


def record_pick(study: optuna.Study, trial: FrozenTrial, rule: PickRule) -> None:
    """Remember the picked point: `best.yaml`, the comparison table, `export` and the report use it."""
    study.set_user_attr(PICKED, {"trial": trial.number, "rule": rule.text})


def study_cost(trials: list[FrozenTrial]) -> dict[str, float]:
    """Total cost; `fte` is the number of full-length training runs the study's steps add up to."""
    total: dict[str, float] = {"trials": 0, "steps": 0, "tokens": 0, "flops": 0.0, "train_seconds": 0.0,
                               "wall_seconds": 0.0, "fte": 0.0}
    for t in trials:
        if not t.state.is_finished():
            continue
        total["trials"] += 1
        for k, v in TrialRecord(t).cost.items():
            if k in total:
                total[k] += v
    return total


def searched_space(study: optuna.Study) -> dict[str, Any]:
    """The search space the study's config declared (name -> the ParamSpec as stored), or {}."""
    return (StudyRecord(study).config.get("search") or {}).get("space") or {}


def is_active(space: dict[str, Any], name: str, values: dict[str, Any]) -> bool:
    """Whether a run with `values` uses `name`: a conditional parameter (momentum only with optim sgd) is
    unused, and its default meaningless, when its condition does not hold."""
    spec = space.get(name)
    condition = spec.get("condition") if isinstance(spec, dict) else None
    return all(values.get(p) in (w if isinstance(w, list) else [w]) for p, w in (condition or {}).items())


def selection_cost(study: optuna.Study) -> dict[str, float] | None:
    """What the stored selection phase's re-training cost, on top of the trials (None: no selection)."""
    selection = StudyRecord(study).selection
    if not selection:
        return None
    runs = [s["cost"] for r in selection["candidates"] + selection.get("failed", [])
            for s in r["per_seed"].values() if "cost" in s]
    return {"runs": len(runs), **{k: sum(c.get(k, 0.0) for c in runs) for k in ("steps", "fte", "wall_seconds")}}


def trial_status(t: FrozenTrial) -> str:
    """How a trial ended, in words: complete, early stopped, pruned, failed, or running."""
    if t.state == TrialState.PRUNED:
        return "pruned"
    if t.state == TrialState.FAIL:
        return "failed"
    if t.state == TrialState.COMPLETE:
        return "early stopped" if TrialRecord(t).stop_reason == "early_stopping" else "complete"
    return "running"


def trial_curve(t: FrozenTrial, metric: str) -> list[tuple[int, dict[str, float]]]:
    """The trial's evaluations as (optimizer step, metrics): lmtune's ``curve`` attribute, else the bare
    numbers a user objective reported (named `metric`)."""
    curve = [c for c in TrialRecord(t).curve if "step" in c]
    if curve:
        return [(int(c["step"]), {k: v for k, v in c.items() if k != "step"}) for c in curve]
    return [(int(s), {metric: v}) for s, v in sorted(t.intermediate_values.items())]


def baseline_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The baseline's completed run, else its latest attempt (an interrupted or crashed baseline is queued
    again, so a study can hold several)."""
    marked = [t for t in trials if TrialRecord(t).is_baseline]
    return next((t for t in marked if t.state == TrialState.COMPLETE), marked[-1] if marked else None)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best feasible trial (Optuna's `best_trial`); with several objectives, the Pareto point best on the
    first objective."""
    if StudyRecord(study).multi_objective:
        ranked = ranked_trials(study)
        return ranked[0] if ranked else None
    try:
        return study.best_trial
    except ValueError:  # nothing completed, or nothing feasible
        return None


def pbt_members(study: optuna.Study) -> list[FrozenTrial]:
    """A PBT study's members, in population order."""
    members = [(TrialRecord(t).pbt_member, t) for t in study.get_trials(deepcopy=False)]
    return [t for _, t in sorted(((m, t) for m, t in members if m is not None), key=lambda mt: mt[0])]


@dataclass
class Comparison:
    """Baseline vs best: the hyperparameters that differ, then metrics and cost, and a verdict in words."""

    rows: list[tuple[str, Any, Any]]
    verdict: str
    improved: bool


def tuned_trial(study: optuna.Study) -> FrozenTrial | None:
    """The final pick: the point `lmtune best --pick` chose, else the selection phase's robust winner when it
    ran, else the search's best trial."""
    stored = StudyRecord(study)
    chosen = (stored.picked or {}).get("trial", (stored.selection or {}).get("winner"))
    if chosen is not None:
        return study.get_trials(deepcopy=False)[chosen]
    return best_trial(study)


def compare(study: optuna.Study) -> Comparison | None:
    """Baseline vs tuned: differing hyperparameters, validation metrics, test metrics (from the selection
    phase, mean ± std over its seeds) and cost; the verdict uses test data when there is any."""
    trials = study.get_trials(deepcopy=False)
    base, tuned = baseline_trial(trials), tuned_trial(study)
    if tuned is None:
        return None
    stored = StudyRecord(study)
    metric = stored.metric
    rows: list[tuple[str, Any, Any]] = []
    b_h, t_h = (TrialRecord(base).trained_hparams if base else {}), TrialRecord(tuned).trained_hparams
    space = searched_space(study)
    for key in SEARCHABLE:  # every searched hyperparameter, and any other that differs, where either uses it
        if key in t_h and (key in space or b_h.get(key) != t_h.get(key)) and (
                is_active(space, key, t_h) or is_active(space, key, b_h)):
            rows.append((key, b_h.get(key), t_h.get(key)))
    objectives = [name for name, _ in stored.objectives]
    for key in dict.fromkeys((*objectives, *shown_metrics(), *(c.metric for c in study_limits(study)))):
        t_v = TrialRecord(tuned).measure(key)
        if t_v is not None:
            label = METRICS[key].row_label if key in METRICS else f"validation {key}"
            rows.append((label, TrialRecord(base).measure(key) if base else None, t_v))
    selection = stored.selection
    test = {r["trial"]: r for r in selection["candidates"]} if selection else {}
    if test:
        def mean_std(r: dict[str, Any] | None) -> str | None:
            return None if r is None else f"{r['test_mean']:.4g} ± {r['test_std']:.3g}"

        n = len(next(iter(test.values()))["per_seed"])
        rows.append((f"test {metric} ({n} seeds)", mean_std(test.get(base.number) if base else None),
                     mean_std(test.get(tuned.number))))
    b_c, t_c = (TrialRecord(base).cost if base else {}), TrialRecord(tuned).cost
    rows.append(("cost (FTE)", b_c.get("fte"), t_c.get("fte")))
    rows.append(("cost (seconds)", b_c.get("wall_seconds"), t_c.get("wall_seconds")))
    if base is None:
        return Comparison(rows, "no baseline trial in this study (search.baseline was off)", False)
    b_value, t_value = TrialRecord(base).value, TrialRecord(tuned).value
    picked = f" (picked by {stored.picked['rule']!r})" if stored.picked else ""
    if base.state != TrialState.COMPLETE or b_value is None:
        return Comparison(rows, f"the baseline trial did not complete ({base.state.name.lower()}: "
                                f"{TrialRecord(base).fail_reason or 'no reason recorded'})", True)
    if tuned.number == base.number:
        where = "on test data" if test else f"({metric} = {b_value:.4g})"
        return Comparison(rows, f"the baseline is already the best configuration {where}{picked}", False)
    maximize = stored.maximize
    if test and base.number in test:
        b, t = test[base.number]["test_mean"], test[tuned.number]["test_mean"]
        change = f"{metric} {b:.4g} -> {t:.4g} ({t - b:+.4g}), trial {tuned.number}"
        if t > b if maximize else t < b:
            return Comparison(rows, f"tuned beats the baseline on test data: {change}", True)
        why = (f"; the pessimistic rule (mean one std towards worse) chose it for its smaller seed spread "
               f"({test[tuned.number]['test_std']:.3g} against {test[base.number]['test_std']:.3g})"
               if selection and selection.get("rule") == "pessimistic" and t != b else "")
        return Comparison(rows, f"tuned does not beat the baseline's mean on test data: {change}{why}", False)
    failed = {f["trial"]: f for f in (selection or {}).get("failed", [])}
    note = ""
    if base.number in failed:
        note = (f"; the baseline was left out of the selection phase "
                f"({next(iter(failed[base.number]['errors'].values()))})")
    gain = t_value - b_value if t_value is not None else 0.0
    if gain > 0 if maximize else gain < 0:
        return Comparison(rows, f"tuned beats the baseline: {metric} {b_value:.4g} -> {t_value:.4g} "
                                f"({gain:+.4g}), trial {tuned.number}{picked}{note}", True)
    return Comparison(rows, f"the tuned trial {tuned.number}{picked} does not beat the baseline on validation: "
                            f"{metric} {b_value:.4g} -> {t_value:.4g} ({gain:+.4g}){note}", False)


def study_limits(study: optuna.Study) -> list[Condition]:
    """The objective.constraints the study was run with (from its stored config)."""
    return [parse_condition(c) for c in (StudyRecord(study).config.get("objective") or {}).get("constraints") or []]


def write_comparison(comp: Comparison, stem: Path) -> list[Path]:
    """The baseline-vs-tuned table as Markdown and CSV (`stem`.md, `stem`.csv), ready to paste in a report."""
    stem.parent.mkdir(parents=True, exist_ok=True)

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

    md = ["| | baseline | tuned |", "| --- | --- | --- |"]
    md += [f"| {name} | {cell(b)} | {cell(t)} |" for name, b, t in comp.rows]
    md += ["", comp.verdict, ""]
    md_path, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md_path.write_text("\n".join(md))
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "baseline", "tuned"])
        writer.writerows([name, cell(b), cell(t)] for name, b, t in comp.rows)
    return [md_path, csv_path]


def best_config(study: optuna.Study) -> dict[str, Any]:
    """The study's stored config with `train:` set to the tuned trial's hyperparameters: rerunnable as is."""
    best = tuned_trial(study)
    if best is None:
        raise ConfigError(f"study {study.study_name!r} has no completed trial yet")
    cfg = StudyRecord(study).config
    train = dict(cfg.get("train") or {})
    train.update(TrialRecord(best).trained_hparams)
    cfg["train"] = train
    return cfg


def transfer_fit_lines(study: optuna.Study) -> list[str]:
    """What a ladder's fitted transfer found, one line per hyperparameter: the law with its exponents' standard
    errors, the prediction for the target, and whether it was used or fell back to a fixed rule (and why)."""
    info = StudyRecord(study).transfer_fit
    if not info:
        return []
    rule = Rule.from_dict(info["rule"])
    target = info.get("target") or {}
    lines = []
    for name, pred in (info.get("prediction") or {}).items():
        law = rule.laws[name]
        fitted = f"{name} ∝ {law.describe()} over {law.n_rungs} rungs" if law.usable else f"{name}: {law.describe()}"
        at = f"N = {fmt(target.get('n_params'), 3)}, D = {fmt(target.get('n_tokens'), 3)} tokens"
        guess = f"; predicted {fmt(pred.get('value'), 3)} (×/÷ {fmt(pred.get('band'), 2)}) for the target ({at})" \
            if pred.get("value") is not None else ""
        used = "used" if pred.get("used") else f"not used, fixed rule instead: {pred.get('fallback')}"
        lines.append(f"{fitted}{guess}; {used}" + "".join(f" ({n})" for n in law.notes))
    return lines
