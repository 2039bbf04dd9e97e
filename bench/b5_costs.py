"""B5's cost table: what each proxy rung's trials cost, as stored, and what the FLOP rule charges a proxy model.

- ``--dbs``: the mean `cost.train_seconds` and `cost.flops` per trial of every study in the given B5 workdir
  databases, grouped by study name less its seed (the rungs, and the target as `b5-ladder-depth`).
- ``--builtin``: each built-in B5 proxy's cost relative to the built-in target, by 6 x all parameters (the count
  before a424921) and by `lmtune.train.model.FlopWeights` with the share of scored positions of B5's data.

    PYTHONPATH=src .venv/bin/python bench/b5_costs.py --dbs /tmp/b5s4/ladder-depth-s*.db
    PYTHONPATH=src .venv/bin/python bench/b5_costs.py --builtin
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile

import optuna


def rung_costs(dbs: list[str]) -> None:
    from lmtune.records import TrialRecord

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    costs: dict[str, list[dict[str, float]]] = {}
    for db in dbs:
        url = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(url):
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            costs.setdefault(summary.study_name.rsplit("-s", 1)[0], []).extend(
                TrialRecord(t).cost for t in study.trials if t.state.name == "COMPLETE")
    for name, cs in sorted(costs.items()):
        print(f"{name}: {len(cs)} trials, train_seconds {statistics.fmean(c['train_seconds'] for c in cs):.2f}, "
              f"flops {statistics.fmean(c['flops'] for c in cs):.4g}")


def builtin_ratios() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmtune.builtin.model import materialize
    from lmtune.config import validate_config
    from lmtune.train.data import IGNORE
    from lmtune.train.model import count_parameters, flop_weights
    from lmtune.train.trainer import Trainer

    path = materialize("tiny")
    with tempfile.TemporaryDirectory() as out:
        cfg = validate_config({"model": {"name_or_path": "builtin:tiny"}, "output_dir": out, "data": {
            "builtin": {"n_train": 3000, "n_validation": 200, "n_test": 200, "seed": 0}},
            "train": {"per_device_train_batch_size": 32, "max_steps": 20, "device": "cpu"}})
        trainer = Trainer(cfg.model, cfg.data, cfg.train, objective_metric="eval_loss").setup()
        batches = list(itertools.islice(trainer._batches, 20))
    share = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches) / sum(
        int(b["attention_mask"].sum()) for b in batches)

    def cost(**shrink: int) -> tuple[int, float]:
        config = AutoConfig.from_pretrained(path)
        for k, v in shrink.items():
            setattr(config, k, v)
        model = AutoModelForCausalLM.from_config(config)
        weights = flop_weights(model)
        return count_parameters(model)[0], weights.per_token + weights.head * share

    n_target, c_target = cost()
    print(f"scored share of input tokens: {share:.3f}")
    for h in (16, 32, 64):
        n, c = cost(hidden_size=h, intermediate_size=3 * h, num_attention_heads=2)
        print(f"hidden {h}: 6 x all parameters {n / n_target:.3f}, FlopWeights {c / c_target:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dbs", nargs="*", default=[])
    p.add_argument("--builtin", action="store_true")
    args = p.parse_args()
    if args.dbs:
        rung_costs(args.dbs)
    if args.builtin:
        builtin_ratios()


if __name__ == "__main__":
    main()
