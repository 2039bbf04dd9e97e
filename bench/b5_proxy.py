"""B5: proxy tuning (`stages:`) vs tuning the target directly, on the built-in task: regret and FTE.

Target = the B1 task (`builtin:tiny`, 3,000 train / 200 validation rows, batch 32, `--steps` steps, warm-up 10 %,
exact match on all 200 validation rows, training seed 42) and the B1 space (`learning_rate` log-uniform in
[1e-4, 3e-2], `lr_scheduler_type` in {linear, cosine, constant_with_warmup}). Regret of a chosen config =
B1 oracle (best 3-seed mean exact match on the 24-point grid, `bench/b1_oracle.json`) minus the chosen config's own
mean exact match over the oracle's seeds 42, 43, 44 (trained here, cached in the results file). FTE is counted in
target full-training equivalents by training FLOPs (6 x parameters x tokens), so a proxy trial costs what its
compute costs relative to one full target run.

`--family smollm2` swaps the target for a real pretrained LLM: LoRA (r 16, all linear layers) on
SmolLM2-135M-Instruct, B7's task (400 training rows, 48 validation rows, batch 8, `--steps` steps, cosine, warm-up
10 %), eval_loss, the learning rate alone searched in [1e-4, 3e-2]; its oracle is the best true score over
`--oracle-grid`, trained here. True scores use the training seeds `--oracle-seeds`.

Variants (each with search seeds `--seeds`):
- ``direct``: TPE (5 startup trials) on the target, `--direct-trials` trials; regret of the best trial after 5 and
  after all trials.
- ``proxy-width``: stage 1 TPE on a proxy (2 layers, hidden 64, 2 heads: a fresh init like the target's; half the
  training rows; half the steps), `--proxy-trials` trials; stage 2 re-runs the top 3 on the target with the
  learning rate x (proxy width / target width) = x 0.5.
- ``proxy-none``: the same stage 1 (the same proxy study, `stages.proxy.study_name`), learning rate carried
  over unchanged: the ablation of the transfer rule.
- ``proxy-loss`` (not in the default list): like proxy-width, but the proxy optimises eval_loss.
- ``ladder-width`` / ``ladder-depth`` (not in the default list): a ladder of proxies (`stages.proxies`) and the
  fitted transfer (`transfer.learning_rate: fit`), then the prediction alone re-run on the target (top_k 1, no
  baseline): by width, 4 layers of hidden 16 / 32 / 64 (fresh inits); by depth, `--depth-layers` of the target's
  layers (`--depth-select`); rungs at `--width-steps` / `--depth-steps` of the steps. `--rung-metric` picks the
  rungs' objective.
- ``ladder-steps`` / ``ladder-steps-fixed`` (not in the default list): one proxy model (`--steps-layers` of the
  target's layers) at the run lengths `--steps-fractions`, so the law is fitted in the training tokens D.
- ``ladder-width-fixed`` / ``ladder-depth-fixed`` (not in the default list): the same ladders with the fixed width
  rule instead of the fit (each rung narrowed around, and the target given, the best rung's best learning rate x
  the width ratio, which is 1 for the depth ladder): the ablation of the fit.

    .venv/bin/python bench/b5_proxy.py                     # every variant, seeds 0,1,2; prints the table
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lmtune.train.metrics import METRICS

HERE = Path(__file__).resolve().parent
VARIANTS = ("direct", "proxy-width", "proxy-none")
SEEDS = (42, 43, 44)
OBJECTIVES = ("eval_loss", "exact_match")  # directions from lmtune.train.metrics.METRICS
ORACLE_FILE = {"exact_match": "b1_oracle.json", "eval_loss": "b1_oracle_eval_loss.json"}  # made by b1_builtin.py


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def base(args: argparse.Namespace, name: str, db: Path) -> dict[str, Any]:
    if args.family == "smollm2":
        return smollm2_base(args, name, db)
    return {
        "study_name": name, "storage": f"sqlite:///{db}", "output_dir": str(args.workdir / "runs"),
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"builtin": {"n_train": 3000, "n_validation": 200, "n_test": 200, "seed": 0}},
        "train": {"per_device_train_batch_size": 32, "max_steps": args.steps, "eval_steps": args.steps,
                  # eval_loss mode: generation metrics are not the objective, so 1 row keeps them cheap
                  "eval_max_samples": 200 if args.metric == "exact_match" else 1, "warmup_ratio": 0.1, "seed": 42,
                  "learning_rate": 1e-3,
                  "lr_scheduler_type": "linear", "torch_num_threads": args.threads, "device": "cpu"},
        "search": {"strategy": "tpe", "n_startup_trials": 5, "baseline": False, "n_trials": args.direct_trials,
                   "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
                             "lr_scheduler_type": ["linear", "cosine", "constant_with_warmup"]}},
        "objective": {"metric": args.metric},
    }


def smollm2_base(args: argparse.Namespace, name: str, db: Path) -> dict[str, Any]:
    """The real-model family: LoRA on SmolLM2-135M-Instruct (B7's task, eval_loss on 48 validation rows), the
    learning rate alone searched (the scheduler fixed to cosine)."""
    return {
        "study_name": name, "storage": f"sqlite:///{db}", "output_dir": str(args.workdir / "runs"),
        "model": {"name_or_path": "builtin:smollm2-135m-instruct"},
        "data": {"builtin": {"n_train": 400, "n_validation": 48, "n_test": 48, "seed": 0,
                             "tasks": ["lookup", "parity"]}, "max_length": 64},
        "train": {"use_lora": True, "lora_target_modules": "all-linear", "lora_r": 16, "lora_alpha": 32,
                  "per_device_train_batch_size": 8, "per_device_eval_batch_size": 48, "max_steps": args.steps,
                  "eval_steps": args.steps, "eval_max_samples": 1, "max_new_tokens": 3, "warmup_ratio": 0.1,
                  "seed": 42, "learning_rate": 1e-3, "lr_scheduler_type": "cosine",
                  "torch_num_threads": args.threads, "device": "cpu"},
        "search": {"strategy": "tpe", "n_startup_trials": 5, "baseline": False, "n_trials": args.direct_trials,
                   "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}}},
        "objective": {"metric": args.metric},
    }


def key(config: dict[str, Any]) -> str:
    """A config's name in the true-score cache: its learning rate, and its scheduler where it was searched."""
    return "|".join([f"{config['learning_rate']:.6g}", *filter(None, [config.get("lr_scheduler_type")])])


def variant_config(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    # proxy-width and proxy-none share stage 1 (the same proxy study); only the transfer rule differs.
    db = args.workdir / f"{'proxy' if variant in ('proxy-width', 'proxy-none') else variant}-s{seed}.db"
    cfg = base(args, f"b5-{variant}-s{seed}", db)
    cfg["search"]["seed"] = seed
    if variant != "direct":
        if variant.startswith("ladder-"):
            cfg["search"]["baseline"] = False
            fixed = variant.endswith("-fixed")  # the same ladder, moved by the width rule instead of the fit
            cfg["stages"] = {"proxies": LADDERS[variant.removesuffix("-fixed")](args, seed),
                             "transfer": {"top_k": 1, "learning_rate": "width" if fixed else "fit"}}
            return cfg
        cfg["stages"] = {
            "proxy": {"model": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 192,
                                "num_attention_heads": 2},
                      "data_fraction": 0.5, "steps_fraction": 0.5, "n_trials": args.proxy_trials,
                      "study_name": f"b5-proxy-{'eval-loss' if variant == 'proxy-loss' else 'em'}-s{seed}",
                      **({"metric": "eval_loss"} if variant == "proxy-loss" else {})},
            "transfer": {"top_k": 3, "learning_rate": "none" if variant == "proxy-none" else "width"}}
    return cfg


def _rungs(args: argparse.Namespace, seed: int, name: str, models: list[dict[str, Any]],
           trials: str, steps: str) -> list[dict[str, Any]]:
    """One rung per model, with its trial count and steps fraction from comma lists (one steps value: all)."""
    counts = [int(n) for n in trials.split(",")]
    fractions = [float(f) for f in steps.split(",")] * (len(models) if "," not in steps else 1)
    return [{"model": m, "steps_fraction": f, "n_trials": n, "metric": args.rung_metric,
             "study_name": f"b5-{name}-{args.rung_metric}-{k}-s{seed}", **({"narrow": 3.0} if k else {})}
            for k, (m, n, f) in enumerate(zip(models, counts, fractions, strict=True))]


LADDERS = {
    "ladder-width": lambda args, seed: _rungs(args, seed, "width", [
        {"hidden_size": h, "intermediate_size": 3 * h, "num_attention_heads": 2} for h in (16, 32, 64)],
        args.width_trials, args.width_steps),
    "ladder-depth": lambda args, seed: _rungs(args, seed, "depth", [
        {"num_hidden_layers": int(n), "layers": args.depth_select} for n in args.depth_layers.split(",")],
        args.depth_trials, args.depth_steps),
    # one proxy model at growing run lengths: the law sees the training tokens D, which the other ladders hold fixed
    "ladder-steps": lambda args, seed: _rungs(args, seed, "steps", [
        {"num_hidden_layers": args.steps_layers}] * len(args.steps_fractions.split(",")),
        args.steps_trials, args.steps_fractions),
}


def run_variant(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from lmtune import tune
    from lmtune.records import StudyRecord, TrialRecord

    cfg = variant_config(variant, seed, args)
    t0 = time.perf_counter()
    study = tune(cfg)
    seconds = time.perf_counter() - t0
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    full_flops = statistics.fmean(TrialRecord(t).cost["flops"] for t in done)
    out: dict[str, Any] = {"seconds": seconds, "target_trials": len(study.trials)}
    if variant == "direct":
        ordered = sorted(done, key=lambda t: t.number)
        for k in (5, len(ordered)):
            best = (max if METRICS[args.metric].maximize else min)(ordered[:k], key=lambda t: t.value)
            out[f"after_{k}"] = {"fte": float(k), "config": best.params, "search_value": best.value}
    else:
        best = (max if METRICS[args.metric].maximize else min)(done, key=lambda t: t.value)
        from lmtune.results import load_study

        names = [r["study"] for r in StudyRecord(study.optuna).proxy_rungs]
        proxies = [load_study(cfg["storage"], n) for n in names]
        # counted in full by both sharing variants
        proxy_flops = sum(TrialRecord(t).cost["flops"] for p in proxies for t in p.trials)
        out["final"] = {"fte": proxy_flops / full_flops + len(done), "proxy_fte_target": proxy_flops / full_flops,
                        "config": best.params, "search_value": best.value,
                        "proxy_best": [p.best_value for p in proxies]}
        fit = study.optuna.user_attrs.get("transfer_fit")
        if fit:
            out["final"]["fit"] = {h: {k: v for k, v in p.items()} for h, p in fit["prediction"].items()}
            from lmtune.results import transfer_fit_lines

            out["final"]["fit_lines"] = transfer_fit_lines(study.optuna)
    return out


def true_score(config: dict[str, Any], args: argparse.Namespace, cache: dict[str, Any]) -> float:
    """Mean validation score (`--metric`) over the seeds `--oracle-seeds`, as the oracle was measured; a seed the
    cache lacks is trained and added (so more seeds can be added to a finished run)."""
    from lmtune.config import validate_config
    from lmtune.train.trainer import Trainer

    name = key(config)
    entry = cache.setdefault(name, {})
    if "seeds" in entry:  # the earlier form: a list over SEEDS
        entry["by_seed"] = dict(zip(map(str, SEEDS), entry.pop("seeds"), strict=False))
    by_seed = entry.setdefault("by_seed", {})
    for s in args.oracle_seeds:
        if str(s) not in by_seed:
            cfg = validate_config(base(args, "eval", args.workdir / "eval.db"))
            train = cfg.train.with_params({**config, "seed": s})
            by_seed[str(s)] = Trainer(cfg.model, cfg.data, train, objective_metric=args.metric,
                                      maximize=METRICS[args.metric].maximize).setup().train().metrics[args.metric]
            log(f"  true score {name} seed {s}: {by_seed[str(s)]:.4f}")
    entry.pop("mean", None)  # the earlier form's mean over its seeds; derived here for the seeds asked for
    return statistics.fmean(by_seed[str(s)] for s in args.oracle_seeds)


def save(path: Path, results: dict[str, Any]) -> None:
    """Write the results, first taking in what another process wrote to the same file since (runs and true
    scores' seeds are only ever added), so processes sharing a workdir share the cache instead of clobbering it."""
    if path.exists():
        disk = json.loads(path.read_text())
        results["runs"] = {**disk.get("runs", {}), **results["runs"]}
        scores = results["true_scores"]
        for name, entry in disk.get("true_scores", {}).items():
            mine = scores.setdefault(name, entry)
            if mine is not entry and "by_seed" in entry:  # seeds trained by either process
                mine.setdefault("by_seed", {}).update({**entry["by_seed"], **mine["by_seed"]})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def oracle_of(args: argparse.Namespace, results: dict[str, Any], path: Path) -> float:
    """B1's stored oracle for the built-in family; for SmolLM2, the best mean over `--oracle-grid`, trained here
    with the same seeds and cache as every chosen config's true score."""
    if args.family == "builtin":
        oracle_file = ORACLE_FILE[args.metric]
        data = json.loads((HERE / oracle_file).read_text())
        if data["steps"] != args.steps:
            sys.exit(f"bench/{oracle_file} was made for {data['steps']} steps; pass --steps {data['steps']}")
        return data["oracle"]
    scores = []
    for lr in args.oracle_grid.split(","):
        scores.append(true_score({"learning_rate": float(lr)}, args, results["true_scores"]))
        save(path, results)
    return (max if METRICS[args.metric].maximize else min)(scores)


def table(results: dict[str, Any], oracle: float, args: argparse.Namespace) -> str:
    rows = ["| variant | FTE spent (seed " + ", ".join(map(str, args.seeds)) + ") | median FTE | regret per seed "
            "| median regret | mean regret | std | chosen configs | wall s |",
            "|---|---|---:|---|---:|---:|---:|---|---:|"]
    cache = results["true_scores"]
    entries: list[tuple[str, str, str]] = [("direct", "after_5", "direct TPE, 5 trials"),
                                           ("direct", f"after_{args.direct_trials}",
                                            f"direct TPE, {args.direct_trials} trials"),
                                           ("proxy-width", "final", "proxy → target, LR × width ratio"),
                                           ("proxy-none", "final", "proxy → target, LR carried over"),
                                           ("proxy-loss", "final", "proxy (eval_loss) → target, LR × width"),
                                           ("ladder-width", "final", "ladder by width, fitted LR → target"),
                                           ("ladder-depth", "final", "ladder by depth, fitted LR → target"),
                                           ("ladder-width-fixed", "final", "ladder by width, LR × width → target"),
                                           ("ladder-depth-fixed", "final", "ladder by depth, LR carried → target"),
                                           ("ladder-steps", "final", "ladder by run length, fitted LR → target"),
                                           ("ladder-steps-fixed", "final", "ladder by run length, LR carried → target")]
    for variant, point, label in entries:
        runs = [results["runs"].get(f"{variant}-s{s}") for s in args.seeds]
        if any(r is None for r in runs):
            continue
        ftes = [r[point]["fte"] for r in runs]
        sign = 1 if METRICS[args.metric].maximize else -1  # regret > 0: worse than the oracle
        regrets = [sign * oracle - sign * true_score(r[point]["config"], args, cache) for r in runs]
        configs = "; ".join(f"{r[point]['config']['learning_rate']:.2g} "
                            f"{r[point]['config'].get('lr_scheduler_type', '')}".strip() for r in runs)
        wall = sum(r["seconds"] for r in runs) if point != "after_5" else float("nan")
        rows.append(f"| {label} | {', '.join(f'{f:.2f}' for f in ftes)} | {statistics.median(ftes):.2f} | "
                    f"{', '.join(f'{g:+.4f}' for g in regrets)} | {statistics.median(regrets):+.4f} | "
                    f"{statistics.fmean(regrets):+.4f} | {statistics.pstdev(regrets):.4f} | {configs} | "
                    f"{'' if math.isnan(wall) else f'{wall:.0f}'} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--direct-trials", type=int, default=8)
    p.add_argument("--proxy-trials", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width-steps", default="0.4", help="steps_fraction of the width ladder's rungs (or one each)")
    p.add_argument("--depth-steps", default="0.2", help="steps_fraction of the depth ladder's rungs (or one each)")
    p.add_argument("--steps-layers", type=int, default=4, help="the steps ladder's proxy: this many layers")
    p.add_argument("--steps-fractions", default="0.25,0.5", help="the steps ladder's rungs: their steps_fraction")
    p.add_argument("--steps-trials", default="6,4", help="trials of the steps ladder's rungs")
    p.add_argument("--width-trials", default="10,6,3", help="trials of the width ladder's rungs (16, 32, 64)")
    p.add_argument("--depth-trials", default="5,3", help="trials of the depth ladder's rungs")
    p.add_argument("--depth-layers", default="1,2", help="layers of the depth ladder's rungs (the target's first N)")
    p.add_argument("--depth-select", default="spread", choices=("spread", "first"),
                   help="which of the target's layers the depth ladder keeps (runs before 2026-12-07: first)")
    p.add_argument("--family", default="builtin", choices=("builtin", "smollm2"),
                   help="the target: builtin:tiny (B1's task), or LoRA on SmolLM2-135M-Instruct (B7's task)")
    p.add_argument("--oracle-grid", default="1e-4,2e-4,4e-4,8e-4,1.6e-3,3.2e-3,6.4e-3,1.28e-2,2.56e-2",
                   help="smollm2: the learning rates whose best true score is the oracle")
    p.add_argument("--oracle-seeds", default=",".join(map(str, SEEDS)), help="training seeds of every true score")
    p.add_argument("--metric", default="exact_match", choices=OBJECTIVES,
                   help="the target's objective, oracle and regret (eval_loss: B1's redesign, with --steps 60)")
    p.add_argument("--rung-metric", default=None, choices=OBJECTIVES, help="the rungs' objective (--metric)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lmtune-b5"))
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.oracle_seeds = [int(s) for s in args.oracle_seeds.split(",")]
    args.rung_metric = args.rung_metric or args.metric
    args.workdir.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    path = args.workdir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}, "true_scores": {}}
    results["command"] = shlex.join([".venv/bin/python", "bench/b5_proxy.py", *sys.argv[1:]])
    for variant in filter(None, args.variants.split(",")):
        for seed in args.seeds:
            name = f"{variant}-s{seed}"
            if name not in results["runs"]:
                log(f"{name} ...")
                results["runs"][name] = run_variant(variant, seed, args)
                save(path, results)
            for point in results["runs"][name].values():
                if isinstance(point, dict):
                    true_score(point["config"], args, results["true_scores"])
                    save(path, results)
    oracle = oracle_of(args, results, path)
    print(f"oracle ({args.family}, {len(args.oracle_seeds)}-seed mean {args.metric}): {oracle:.4f}")
    print(table(results, oracle, args))


if __name__ == "__main__":
    main()
