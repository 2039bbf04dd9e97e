"""B5 aside: each width-ladder rung's loss on a learning-rate grid, to check the premise of the ladder's
consistency check (`proxy._carried`: a larger rung reaches at least a smaller one's best loss).

The rungs are those of `b5_proxy.py --variants ladder-width --metric eval_loss --steps 60` (hidden 16 / 32 / 64,
4 layers, 0.4 of the steps), trained with `constant_with_warmup` at each rate of `--grid` with training seeds
`--seeds`; prints each rung's mean eval_loss per rate and its best.

    PYTHONPATH=src .venv/bin/python bench/b5_rung_grid.py --grid 2e-3,3.5e-3,6e-3,1e-2,1.7e-2,2.8e-2
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import b5_proxy


def main() -> None:
    from lmtune.config import validate_config
    from lmtune.proxy import plan_rungs
    from lmtune.train.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="2e-3,3.5e-3,6e-3,1e-2,1.7e-2,2.8e-2,4.5e-2")
    p.add_argument("--seeds", default="42,43")
    p.add_argument("--rungs", default="1,2", help="which rungs (0: hidden 16, 1: 32, 2: 64)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lmtune-b5-grid"))
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(family="builtin", workdir=args.workdir, steps=60, metric="eval_loss",
                            rung_metric="eval_loss", threads=1, direct_trials=8, width_trials="10,6,3",
                            width_steps="0.4")
    cfg = validate_config(b5_proxy.variant_config("ladder-width", 0, ns))
    rungs = plan_rungs(cfg)
    grid = args.grid.split(",")
    print("| rung | " + " | ".join(grid) + " | best |\n|---|" + "---:|" * (len(grid) + 1))
    for k in (int(r) for r in args.rungs.split(",")):
        stage = rungs[k].cfg
        means = []
        for lr in (float(x) for x in grid):
            losses = [Trainer(stage.model, stage.data, stage.train.with_params(
                {"learning_rate": lr, "lr_scheduler_type": "constant_with_warmup", "seed": int(s)}),
                objective_metric="eval_loss", maximize=False).setup().train().metrics["eval_loss"]
                for s in args.seeds.split(",")]
            means.append(statistics.fmean(losses))
        print(f"| {Path(str(stage.model.name_or_path)).name} | " + " | ".join(f"{m:.3f}" for m in means)
              + f" | {min(means):.3f} |", flush=True)


if __name__ == "__main__":
    main()
