"""B8: hypervolume of the exact-match / training-FLOPs front against budget spent, lmtune's multi-objective
samplers against random search, on the built-in task.

Task: `builtin:tiny` on the built-in synthetic tasks (3,000 train / 200 validation rows, data seed 0), warm-up 10 %,
one evaluation at the end of each run on all 200 validation rows, training seed 42. Objectives: validation exact
match of greedy answers (maximize) and training FLOPs (6 x parameters x training tokens, minimize). The space is
discrete so every configuration can be trained once and the searches replayed on the stored outcomes:

- `learning_rate` in {3e-4, 1e-3, 3e-3, 1e-2}, `per_device_train_batch_size` in {4, 8, 16, 32}, `max_steps` in
  {10, 20, 40, 80, 160}: 80 configurations.
- Table: every configuration trained once by `lmtune.tune()` with the grid strategy and both objectives (a real
  lmtune multi-objective study, SQLite under ``--workdir``, resumable). Training here is deterministic for a
  config (one thread, fixed seed), so a search that proposes a config gets what training it again would give;
  ``--verify N`` re-trains N random configs through `lmtune.tune()` and compares.
- Searches: `lmtune.Study` with lmtune's samplers (`create_sampler` through ``strategy``), `search.baseline`
  off, both objectives, ``--trials`` trials, objective = the table's metrics for the proposed config. Budget
  axes: trials (= lmtune FTE: every trial is a full run of its own config) and cumulative training FLOPs in units
  of the largest config's FLOPs.
- Hypervolume: in (exact_match, flops / max table flops), reference point (exact_match 0, flops 1.0), as a
  fraction of the hypervolume of the whole table's front (1.0 = the best front any search could find).
- Seeds: ``--dev-seeds`` tune the samplers' settings; ``--seeds`` (disjoint) give the reported numbers.

    .venv/bin/python bench/b8_pareto.py --table-only          # train the 80 configs (resumable)
    .venv/bin/python bench/b8_pareto.py --table bench/b8_table.json --seeds 0-9   # replay on the stored table
    .venv/bin/python bench/b8_pareto.py --strategies random,tpe,nsga2,gp --seeds 10-29
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna

HERE = Path(__file__).resolve().parent
LRS = [3e-4, 1e-3, 3e-3, 1e-2]
BATCHES = [4, 8, 16, 32]
STEPS = [10, 20, 40, 80, 160]
OBJECTIVES = [("exact_match", "maximize"), ("flops", "minimize")]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def space() -> dict[str, Any]:
    return {"learning_rate": {"choices": LRS}, "per_device_train_batch_size": {"choices": BATCHES},
            "max_steps": {"choices": STEPS}}


def key(p: dict[str, Any]) -> str:
    return f"{float(p['learning_rate']):g}|{int(p['per_device_train_batch_size'])}|{int(p['max_steps'])}"


def table_config(workdir: Path, threads: int, name: str = "b8-table", n_trials: int | None = None,
                 strategy: str = "grid") -> dict[str, Any]:
    return {
        "study_name": name, "storage": f"sqlite:///{workdir / 'table.db'}", "output_dir": str(workdir / "runs"),
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"builtin": {"n_train": 3000, "n_validation": 200, "n_test": 200, "seed": 0}},
        "train": {"per_device_train_batch_size": 8, "max_steps": 40, "eval_steps": 1000, "eval_max_samples": 200,
                  "warmup_ratio": 0.1, "seed": 42, "learning_rate": 1e-3, "torch_num_threads": threads,
                  "device": "cpu"},
        "search": {"strategy": strategy, "baseline": False, "seed": 0, "space": space(),
                   "n_trials": n_trials or len(LRS) * len(BATCHES) * len(STEPS)},
        "objective": {"metrics": [n for n, _ in OBJECTIVES]},
    }


def build_table(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from lmtune import tune
    from lmtune.records import TrialRecord

    started = time.perf_counter()
    study = tune(table_config(args.workdir, args.threads))
    table = {}
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            m = TrialRecord(t).metrics
            table[key(t.params)] = {k: m[k] for k in ("exact_match", "flops", "train_seconds", "peak_memory_bytes")}
    log(f"table: {len(table)} configs ({time.perf_counter() - started:.0f} s this call)")
    return table


def verify(args: argparse.Namespace, table: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Re-train `args.verify` random configs through lmtune.tune() and compare with the table."""
    from lmtune import tune
    from lmtune.records import TrialRecord

    rng = random.Random(123)
    out = []
    for i, k in enumerate(rng.sample(sorted(table), args.verify)):
        lr, bs, steps = k.split("|")
        cfg = table_config(args.workdir, args.threads, name=f"b8-verify-{i}", n_trials=1, strategy="random")
        cfg["search"]["space"] = {"learning_rate": float(lr), "per_device_train_batch_size": int(bs),
                                  "max_steps": int(steps)}
        cfg["storage"] = f"sqlite:///{args.workdir / 'verify.db'}"
        cfg["search"]["baseline"] = True
        cfg["train"].update(learning_rate=float(lr), per_device_train_batch_size=int(bs), max_steps=int(steps))
        study = tune(cfg)
        again = TrialRecord(study.trials[0]).metrics["exact_match"]
        out.append({"config": k, "table": table[k]["exact_match"], "again": again})
        log(f"verify {k}: table {table[k]['exact_match']:.4f}, again {again:.4f}")
    return out


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by (exact_match, normalised flops) points, maximizing the first and minimizing the second,
    inside the box exact_match >= 0, flops <= 1."""
    area, best = 0.0, 0.0
    for em, f in sorted(points, key=lambda p: (p[1], -p[0])):
        if f >= 1.0 or em <= best:
            continue
        area += (em - best) * (1.0 - f)
        best = em
    return area


def search(strategy: str, seed: int, trials: int, table: dict[str, dict[str, float]], startup: int | None
           ) -> list[dict[str, Any]]:
    """One search replayed on the table: the configs proposed in order, with their metrics."""
    from lmtune.study import Study

    study = Study(f"{strategy}-{seed}", "memory://", space=space(), strategy=strategy, seed=seed,
                  objectives=OBJECTIVES, n_startup_trials=startup)
    study.optimize(lambda ctx: table[key(ctx.params)], n_trials=trials)
    return [{"config": key(t.params), **table[key(t.params)]} for t in study.trials]


def curve(rows: list[dict[str, Any]], max_flops: float, full: float) -> list[float]:
    """Hypervolume (fraction of the table's) after each trial."""
    pts, out = [], []
    for r in rows:
        pts.append((r["exact_match"], r["flops"] / max_flops))
        out.append(hypervolume(pts) / full)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=HERE / "b8_work")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--table", type=Path, help="replay on this stored table (bench/b8_table.json) instead of "
                                               "training it under --workdir")
    ap.add_argument("--verify", type=int, default=0)
    ap.add_argument("--strategies", default="random,tpe,nsga2,gp",
                    help="comma-separated; name:startup sets n_startup_trials (nsga2: its generation size)")
    ap.add_argument("--seeds", default="10-29")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--at", default="4,8,12,16", help="report hypervolume after these many trials")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = json.loads(args.table.read_text()) if args.table else build_table(args)
    n_configs = len(LRS) * len(BATCHES) * len(STEPS)
    if len(table) < n_configs:
        sys.exit(f"the table has {len(table)} of {n_configs} configs; run again to finish it")
    (args.workdir / "table.json").write_text(json.dumps(table, indent=1))
    if args.verify:
        (args.workdir / "verify.json").write_text(json.dumps(verify(args, table), indent=1))
    if args.table_only:
        return
    max_flops = max(r["flops"] for r in table.values())
    full = hypervolume([(r["exact_match"], r["flops"] / max_flops) for r in table.values()])
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi) + 1)) if hi else [int(s) for s in args.seeds.split(",")]
    at = [int(a) for a in args.at.split(",")]
    print(f"\ntable front hypervolume {full:.4f}; {n_configs} configs; best exact_match "
          f"{max(r['exact_match'] for r in table.values()):.3f}; seeds {args.seeds}; {args.trials} trials\n")
    print("| strategy | " + " | ".join(f"HV after {a} trials" for a in at) + " | HV at 2 / 4 largest-config FLOPs |")
    print("|---|" + "---:|" * (len(at) + 1))
    results = {}
    for spec in args.strategies.split(","):
        name, _, startup = spec.partition(":")
        curves, by_flops = [], []
        for seed in seeds:
            rows = search(name, seed, args.trials, table, int(startup) if startup else None)
            hv = curve(rows, max_flops, full)
            curves.append(hv)
            spent = list(itertools.accumulate(r["flops"] / max_flops for r in rows))
            by_flops.append([max([0.0, *(h for h, s in zip(hv, spent, strict=True) if s <= b)]) for b in (2, 4)])
        results[spec] = {"curves": curves, "by_flops": by_flops}

        def cell(vals: list[float]) -> str:
            return f"{statistics.fmean(vals):.3f} ± {statistics.stdev(vals) / len(vals) ** 0.5:.3f}"

        print(f"| {spec} | " + " | ".join(cell([c[a - 1] for c in curves]) for a in at) + " | "
              + " / ".join(cell([b[i] for b in by_flops]) for i in range(2)) + " |")
    meta = {"command": shlex.join([sys.executable, *sys.argv]), "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, nproc {os.cpu_count()}", "optuna": optuna.__version__,
            "seeds": seeds, "table_front_hv": full, "results": results}
    (args.workdir / f"results-{args.strategies.replace(',', '_').replace(':', '')}-{args.seeds}.json").write_text(
        json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
