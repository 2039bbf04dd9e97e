"""B5 aside: which layers a layer-dropped proxy of a pretrained model should keep.

Each proxy is built by lmtune (`stages.proxy.model: {num_hidden_layers: N, layers: first | spread}`) from
SmolLM2-135M-Instruct (30 layers) and trained with LoRA on B5's SmolLM2 task (`b5_proxy.py --family smollm2`) for
`--steps` steps at `--lr`, training seed 42; prints each one's eval_loss on the 48 validation rows, beside the
full model's.

    PYTHONPATH=src .venv/bin/python bench/b5_layer_choice.py --layers 2,4,8 --steps 12 --lr 3e-3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import b5_proxy


def main() -> None:
    from lmtune.config import validate_config
    from lmtune.proxy import build_proxy_model, kept_layers, proxy_config
    from lmtune.train.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="2,4,8")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lmtune-b5-layers"))
    args = p.parse_args()
    ns = argparse.Namespace(family="smollm2", workdir=args.workdir, steps=args.steps, metric="eval_loss",
                            threads=1, direct_trials=1)
    base = b5_proxy.smollm2_base(ns, "layers", args.workdir / "layers.db")
    base["train"]["learning_rate"] = args.lr
    print("| proxy | layers kept | eval_loss |\n|---|---|---:|")
    for n in [int(x) for x in args.layers.split(",")] + [0]:
        for how in ("first", "spread") if n else ("all",):
            stages = {"stages": {"proxy": {"model": {"num_hidden_layers": n, "layers": how}}}} if n else {}
            cfg = validate_config({**base, **stages})
            stage = proxy_config(cfg, build_proxy_model(cfg), n_train=400) if n else cfg
            loss = Trainer(stage.model, stage.data, stage.train, objective_metric="eval_loss",
                           maximize=False).setup().train().metrics["eval_loss"]
            kept = kept_layers(30, n, how) if n else "all 30"
            print(f"| {how} {n or ''} | {kept} | {loss:.3f} |", flush=True)


if __name__ == "__main__":
    main()
