"""Could freeze-thaw pay under the shipped `auto`? An upper bound on the LCBench surrogate (issue 13).

Freeze-thaw would keep a pruned trial's checkpoint and later continue ("thaw") it instead of starting a new
configuration. Optuna's pruners never pause a trial (a trial that survives a rung simply goes on), so the only
thing thawing could add to lmtune is a second chance for trials the extrapolating pruner stopped. This counts, for
runs of the shipped `auto` at a given budget, how many pruned trials would have ended (epoch 52, the surrogate's
full curve) above the run's final incumbent: an oracle that thawed exactly those, at the cost of their remaining
epochs only, is the most any thaw rule could gain.

    PYTHONPATH=src .venv/bin/python bench/thaw_headroom.py --seeds 10 --budget 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lcbench  # noqa: E402


def headroom(instance: str, seed: int, budget: float, surrogate: lcbench.Surrogate) -> dict[str, Any]:
    """One shipped-auto run: its final incumbent, and the pruned trials whose full curve would have beaten it."""
    import optuna

    import lmtune

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = lmtune.Study(f"thaw-{instance}-{seed}", "memory://", space=lcbench.SPACE, strategy="auto",
                         metric="val_accuracy", direction="maximize", seed=seed, max_resource=lcbench.MAX_EPOCH)

    def objective(ctx: lmtune.TrialContext) -> dict[str, float]:
        acc, _ = surrogate.curve(instance, ctx.params)
        epoch = 0
        for epoch in range(1, lcbench.MAX_EPOCH + 1):
            if ctx.report(epoch, {"val_accuracy": acc[epoch - 1]}):
                break
        ctx.set("cost", {"fte": epoch / lcbench.MAX_EPOCH})
        ctx.set("epochs", epoch)
        return {"val_accuracy": float(acc[epoch - 1])}

    study.optimize(objective, budget_fte=budget)
    finished = [float(t.user_attrs["metrics"]["val_accuracy"]) for t in study.trials
                if t.user_attrs.get("epochs") == lcbench.MAX_EPOCH]
    best = max(finished, default=float("-inf"))
    pruned = [t for t in study.trials if t.user_attrs.get("epochs", lcbench.MAX_EPOCH) < lcbench.MAX_EPOCH]
    finals = [(float(surrogate.curve(instance, t.params)[0][-1]), int(t.user_attrs["epochs"])) for t in pruned]
    better = [(final, epochs) for final, epochs in finals if final > best]
    return {"trials": len(study.trials), "pruned": len(pruned), "better": len(better), "best": best,
            "best_thawed": max((f for f, _ in better), default=None),
            "thaw_epochs": sum(lcbench.MAX_EPOCH - e for _, e in better)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget", type=float, default=10.0, help="FTE per run")
    args = p.parse_args()
    surrogate = lcbench.Surrogate()
    runs = [headroom(i, s, args.budget, surrogate) for i in lcbench.DEV_INSTANCES for s in range(args.seeds)]
    gains = [100 * (r["best_thawed"] - r["best"]) / r["best"] for r in runs if r["better"]]
    print(f"shipped auto, {len(lcbench.DEV_INSTANCES)} dev tasks x seeds 0..{args.seeds - 1}, {args.budget:g} FTE")
    print(f"runs {len(runs)}; trials {sum(r['trials'] for r in runs)}; pruned {sum(r['pruned'] for r in runs)}; "
          f"pruned trials whose full curve beats their run's final incumbent: {sum(r['better'] for r in runs)} "
          f"in {len(gains)} runs")
    if gains:
        print(f"gain of the best such trial over the incumbent (% of its accuracy): mean {statistics.mean(gains):.2f}, "
              f"max {max(gains):.2f}, over all {len(runs)} runs {sum(gains) / len(runs):.2f}; "
              "epochs a perfect thaw would spend: "
              f"{sum(r['thaw_epochs'] for r in runs)} ({sum(r['thaw_epochs'] for r in runs) / 52:.1f} FTE)")


if __name__ == "__main__":
    main()
