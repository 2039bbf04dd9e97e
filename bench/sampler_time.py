"""Sampler and pruner time per trial of a strategy, up to 300 trials (issue 13 asks for < 1 s at 300 trials).

A synthetic objective with learning curves (7 parameters, 20 steps, the end best at a random point) runs in
an in-memory `lmtune.Study`; the time spent in the sampler's proposal methods and in the pruner is measured
per trial. The objective itself costs microseconds, so the study's wall time is almost all strategy overhead.

    PYTHONPATH=src .venv/bin/python bench/sampler_time.py --strategies auto,tpe,bohb --trials 300
    PYTHONPATH=src .venv/bin/python bench/sampler_time.py --strategies 'auto[inner=gp]' --space integers

``auto[inner=gp]`` is ``auto`` with Optuna's GPSampler in place of its TPE (the issue-13 probe of bench/lcbench.py).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SPACE = {f"x{i}": {"low": 0.0, "high": 1.0} for i in range(6)} | {"lr": {"low": 1e-5, "high": 1e-1, "log": True}}
# LCBench's shape (bench/lcbench.py): three of the seven are integers with wide log ranges, which Optuna's GP
# optimises its acquisition over by discrete local search (the costly part).
INTEGERS = SPACE | {"x0": {"low": 16, "high": 512, "log": True}, "x1": {"low": 64, "high": 1024, "log": True},
                    "x2": {"low": 1, "high": 5}}


def _unit(value: float, dist: dict[str, Any]) -> float:
    """`value` mapped to [0, 1] within its range (log ranges in log space)."""
    f = math.log if dist.get("log") else float
    return (f(value) - f(dist["low"])) / (f(dist["high"]) - f(dist["low"]))
STEPS = 20


def _timed(obj: Any, name: str, into: list[float]) -> None:
    inner: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    setattr(obj, name, wrapper)


def run(strategy: str, n_trials: int, seed: int, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import optuna

    import lmtune

    rng = np.random.default_rng(seed)
    centre = rng.random(6)
    name, _, variant = strategy.partition("[")
    study = lmtune.Study(f"t-{strategy}", "memory://", space=space, strategy=name, metric="acc",
                         direction="maximize", seed=seed, max_resource=STEPS)
    if variant == "inner=gp]":
        study.optuna.sampler.inner = optuna.samplers.GPSampler(  # type: ignore[attr-defined]
            seed=seed, n_startup_trials=5, warn_independent_sampling=False)
    elif variant:
        raise SystemExit(f"unknown variant {strategy!r}")
    per_trial: list[float] = []
    current: list[float] = []
    sampler, pruner = study.optuna.sampler, study.optuna.pruner
    for name in ("infer_relative_search_space", "sample_relative", "sample_independent"):
        _timed(sampler, name, current)
    _timed(pruner, "prune", current)

    def objective(ctx: lmtune.TrialContext) -> dict[str, float]:
        per_trial.append(sum(current))  # what the sampler spent proposing this trial
        current.clear()
        x = np.array([_unit(ctx.params[f"x{i}"], space[f"x{i}"]) for i in range(6)])
        final = 1.0 - float(np.sum((x - centre) ** 2)) - 0.1 * abs(math.log10(ctx.params["lr"]) + 3)
        rate = 0.3 + float(x[0])
        value = 0.0
        for step in range(1, STEPS + 1):
            value = final - 0.5 * step ** -rate
            if ctx.report(step, {"acc": value}):
                break
        return {"acc": value}

    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    wall = time.perf_counter() - start
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    last = per_trial[-50:]
    windows = " / ".join(f"{statistics.fmean(per_trial[i:i + 50]):.3f}" for i in range(0, len(per_trial), 50))
    return {"wall_s": wall, "mean_s": statistics.fmean(per_trial), "last50_mean_s": statistics.fmean(last),
            "last50_max_s": max(last), "pruned": pruned, "windows": windows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", default="auto,tpe,bohb")
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space", choices=("continuous", "integers"), default="continuous",
                   help="integers: x0..x2 are integers shaped like LCBench's batch_size, max_units, num_layers")
    args = p.parse_args()
    print("| strategy | trials | pruned | sampler+pruner s/trial (mean) | last 50: mean | max | wall s | "
          "mean per 50 trials |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for strategy in args.strategies.split(","):
        r = run(strategy.strip(), args.trials, args.seed, INTEGERS if args.space == "integers" else SPACE)
        print(f"| {strategy} | {args.trials} | {r['pruned']:.0f} | {r['mean_s']:.4f} | {r['last50_mean_s']:.4f} | "
              f"{r['last50_max_s']:.4f} | {r['wall_s']:.1f} | {r['windows']} |")


if __name__ == "__main__":
    main()
