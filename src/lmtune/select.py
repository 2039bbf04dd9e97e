"""The selection phase: re-check the search's top configs on held-out test data with several seeds.

A search picks the config with the best *validation* score of *one* run, so its winner is biased upwards twice:
by validation overfitting and by seed luck. Re-training the top-k (and the baseline) with S seeds and scoring
them on the test split, which the search never saw, gives an estimate users can trust, and a robust winner.
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from lmtune import records
from lmtune.config import ExperimentConfig, run_dir
from lmtune.errors import DivergedError, LmtuneError, OutOfMemoryError
from lmtune.records import StudyRecord, TrialRecord
from lmtune.results import ranked_trials
from lmtune.train.oom import free_memory, train_fitting_memory
from lmtune.train.trainer import PreparedData, Progress, Trainer, prepare


@dataclass
class Candidate:
    trial: int
    is_baseline: bool
    hparams: dict[str, Any]
    search_value: float | None


def candidates(study: optuna.Study, top_k: int, include_baseline: bool) -> list[Candidate]:
    """The baseline trial (when asked) and the top-k feasible completed, non-PBT trials by search value; with
    several objectives, the top-k Pareto points by the first objective (`ranked_trials` puts the front first)."""
    done = [t for t in ranked_trials(study)
            if TrialRecord(t).pbt_member is None and TrialRecord(t).hparams is not None]
    picked = [t for t in done if not TrialRecord(t).is_baseline][:top_k]
    base = next((t for t in done if TrialRecord(t).is_baseline), None)
    if include_baseline and base is not None:
        picked = [base, *picked]
    if not picked:
        raise LmtuneError(f"study {study.study_name!r} has no completed trial to select from")
    return [Candidate(t.number, TrialRecord(t).is_baseline, TrialRecord(t).hparams or {}, TrialRecord(t).value)
            for t in picked]


def selection_is_current(cfg: ExperimentConfig, study: optuna.Study) -> bool:
    """True when the stored selection already covers these candidates, seeds and rule (a resumed run that
    added no better trial does not retrain anything)."""
    stored = StudyRecord(study).selection
    if not stored or cfg.select is None:
        return False
    wanted = {c.trial for c in candidates(study, cfg.select.top_k, cfg.select.include_baseline)}
    checked = stored["candidates"] + stored.get("failed", [])
    seeds = {str(s) for s in cfg.select.seeds}
    return {r["trial"] for r in checked} == wanted and stored["rule"] == cfg.select.rule and all(
        set(r["per_seed"]) | set(r.get("errors", {})) == seeds for r in checked)


def run_selection(cfg: ExperimentConfig, study: optuna.Study, prepared: tuple[Any, PreparedData] | None = None,
                  progress: Progress | None = None) -> dict:
    """Train every candidate with every seed, score validation and test, pick the winner, keep its model.
    `prepared` is the experiment's tokenizer and data (`prepare(cfg)`), when a caller has them already.

    The result is stored as the study's ``selection`` attribute and returned.
    """
    sel = cfg.select
    if sel is None:
        raise LmtuneError("no select: section in the config; add e.g. select: {top_k: 3, seeds: [0, 1, 2]}")
    prepared = prepared or prepare(cfg)
    if not prepared[1].test:
        raise LmtuneError("the selection phase needs a test split; set data.test_fraction > 0 or data.test_path")
    metric, maximize = cfg.objective.metric, cfg.objective.maximize
    workdir = run_dir(cfg) / "selection"
    rows, failed = [], []
    cands = candidates(study, sel.top_k, sel.include_baseline)
    for cand in cands:
        per_seed, errors = {}, {}
        for seed in sel.seeds:
            train_cfg = cfg.train.with_params({**cand.hparams, "seed": seed, "output_dir": None})
            try:
                trainer = train_fitting_memory(train_cfg, cfg.search.oom_retries, lambda c: Trainer.from_config(
                    cfg, c, prepared=prepared, progress=progress))
            except (DivergedError, OutOfMemoryError) as e:  # this seed's failure, not the selection's
                errors[str(seed)] = str(e)
                continue
            result = trainer.result
            test = trainer.evaluate("test")
            per_seed[str(seed)] = {"validation": result.final_metrics, "test": test, "cost": result.cost()}
            if len(per_seed) == 1:
                trainer.save(workdir / f"trial-{cand.trial}", result)
            del trainer  # before the next seed loads its own model
            free_memory()
        if errors:
            failed.append({"trial": cand.trial, "baseline": cand.is_baseline, "hparams": cand.hparams,
                           "errors": errors, "per_seed": per_seed})
        else:
            rows.append(_summarise(cand, per_seed, metric, maximize))
    if not rows:
        reasons = "; ".join(f"trial {f['trial']}: {next(iter(f['errors'].values()))}" for f in failed)
        raise LmtuneError(f"every candidate of the selection phase failed on some seed ({reasons}); the search "
                          "results are kept: lower the learning rates searched or the micro-batch, then run "
                          "`lmtune select` again")
    tuned = [c for c in cands if not c.is_baseline] or cands
    search_winner = max(tuned, key=lambda c: (1 if maximize else -1) * (c.search_value or 0.0)).trial
    report = _decide(rows, metric, maximize, sel.rule, search_winner)
    report["failed"] = failed
    report["flags"] += [f"trial {f['trial']} left out of the selection: it failed on seed "
                        f"{', '.join(f['errors'])} ({next(iter(f['errors'].values()))}), so it is not robust"
                        for f in failed]
    winner = report["winner"]
    best_dir = run_dir(cfg) / "best-model"
    shutil.rmtree(best_dir, ignore_errors=True)
    (workdir / f"trial-{winner}").rename(best_dir)
    (best_dir / "selection.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    study.set_user_attr(records.SELECTION, report)
    winner_row = next(r for r in rows if r["trial"] == winner)
    study.set_user_attr(records.BEST_MODEL, {"trial": winner, "dir": str(best_dir.resolve()), "selected": True,
                                       "metrics": winner_row["per_seed"][str(sel.seeds[0])]["validation"]})
    return report


def _summarise(cand: Candidate, per_seed: dict[str, dict], metric: str, maximize: bool) -> dict[str, Any]:
    test = [s["test"][metric] for s in per_seed.values()]
    val = [s["validation"][metric] for s in per_seed.values()]
    t_mean, t_std = statistics.fmean(test), statistics.pstdev(test)
    v_mean = statistics.fmean(val)
    # Positive gap = validation looks better than test: what tuning on validation data overstates.
    gap = (v_mean - t_mean) if maximize else (t_mean - v_mean)
    return {"trial": cand.trial, "baseline": cand.is_baseline, "search_value": cand.search_value,
            "hparams": cand.hparams, "per_seed": per_seed, "test_mean": t_mean, "test_std": t_std,
            "validation_mean": v_mean, "gap": gap}


def _decide(rows: list[dict[str, Any]], metric: str, maximize: bool, rule: str,
            search_winner: int) -> dict[str, Any]:
    """The robust winner among the configs that trained on every seed, and the flags a user should read.
    `search_winner` is the best trial by search value, whether or not it survived the re-training."""
    sign = 1 if maximize else -1

    def robust(r: dict[str, Any]) -> float:
        # "pessimistic" = mean one standard deviation towards worse: prefers configs that are good on every seed.
        return sign * r["test_mean"] - (r["test_std"] if rule == "pessimistic" else 0.0)

    for r in rows:
        r["score"] = robust(r) * sign
    winner = max(rows, key=robust)
    n_seeds = len(rows[0]["per_seed"])
    flags = []
    if search_winner != winner["trial"]:
        flags.append(f"the search winner (trial {search_winner}) is not the robust winner "
                     f"(trial {winner['trial']}) on test data with {n_seeds} seeds")
    for r in rows:  # one seed has no spread to compare the gap with
        if n_seeds > 1 and r["gap"] > max(r["test_std"], 1e-12):
            flags.append(f"trial {r['trial']}: validation {metric} exceeds test by {r['gap']:.4g}, more than "
                         f"the seed spread ({r['test_std']:.4g}): the validation set is being overfitted")
    if winner["baseline"]:
        flags.append("the baseline is the robust winner: tuning did not beat it on test data")
    return {"metric": metric, "rule": rule, "winner": winner["trial"], "search_winner": search_winner,
            "candidates": rows, "flags": flags}
