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
from lmtune.records import StudyRecord, TrialRecord
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


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials with a finite value, best first (ties: the earlier trial first)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    sign = -1 if StudyRecord(study).maximize else 1
    return sorted(done, key=lambda t: (sign * t.value, t.number))  # type: ignore[operator]


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
    try:
        return study.best_trial
    except ValueError:
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
    """The final pick: the selection phase's robust winner when it ran, else the search's best trial."""
    selection = StudyRecord(study).selection
    if selection:
        return study.get_trials(deepcopy=False)[selection["winner"]]
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
    b_m = TrialRecord(base).metrics if base else {}
    t_m = TrialRecord(tuned).metrics
    for key in dict.fromkeys((metric, *shown_metrics())):
        if key in t_m:
            label = METRICS[key].row_label if key in METRICS else f"validation {key}"
            rows.append((label, b_m.get(key), t_m[key]))
    selection = stored.selection
    test = {r["trial"]: r for r in selection["candidates"]} if selection else {}
    if test:
        def fmt(r: dict[str, Any] | None) -> str | None:
            return None if r is None else f"{r['test_mean']:.4g} ± {r['test_std']:.3g}"

        n = len(next(iter(test.values()))["per_seed"])
        rows.append((f"test {metric} ({n} seeds)", fmt(test.get(base.number) if base else None),
                     fmt(test.get(tuned.number))))
    b_c, t_c = (TrialRecord(base).cost if base else {}), TrialRecord(tuned).cost
    rows.append(("cost (FTE)", b_c.get("fte"), t_c.get("fte")))
    rows.append(("cost (seconds)", b_c.get("wall_seconds"), t_c.get("wall_seconds")))
    if base is None:
        return Comparison(rows, "no baseline trial in this study (search.baseline was off)", False)
    if base.state != TrialState.COMPLETE or base.value is None:
        return Comparison(rows, f"the baseline trial did not complete ({base.state.name.lower()}: "
                                f"{TrialRecord(base).fail_reason or 'no reason recorded'})", True)
    if tuned.number == base.number:
        where = "on test data" if test else f"({metric} = {base.value:.4g})"
        return Comparison(rows, f"the baseline is already the best configuration {where}", False)
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
    gain = tuned.value - base.value if tuned.value is not None else 0.0
    if gain > 0 if maximize else gain < 0:
        return Comparison(rows, f"tuned beats the baseline: {metric} {base.value:.4g} -> {tuned.value:.4g} "
                                f"({gain:+.4g}), trial {tuned.number}{note}", True)
    return Comparison(rows, f"the tuned trial {tuned.number} does not beat the baseline on validation: {metric} "
                            f"{base.value:.4g} -> {tuned.value:.4g} ({gain:+.4g}){note}", False)


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
