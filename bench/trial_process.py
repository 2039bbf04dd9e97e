"""B6: what it costs to give each trial its own process: forked from a warm worker vs a fresh interpreter.

Three ways to run the same 1-trial study on the built-in micro model, --repeats times each, median wall
seconds from "start this trial" to its result:

- in-process: the trial runs in the worker itself (no isolation; the baseline);
- forked: lmtune's local executor, a child forked per trial from a worker that has imported torch and
  transformers and encoded the data (through its `TrialServer`);
- fresh process: `python -m lmtune run` per trial, i.e. a new interpreter that imports everything again.

    .venv/bin/python bench/trial_process.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lmtune.config import validate_config
from lmtune.executors.local import TrialServer, warm_up
from lmtune.quiet import quiet_libraries
from lmtune.study import open_study
from lmtune.trial import FineTuneObjective


def config(root: Path, name: str) -> dict:
    return {"study_name": name, "storage": f"sqlite:///{root / 'b6.db'}", "output_dir": str(root / "runs"),
            "model": {"name_or_path": "builtin:micro"},
            "data": {"builtin": {"n_train": 300, "n_validation": 40, "n_test": 40}},
            "train": {"learning_rate": 3e-3, "per_device_train_batch_size": 16, "max_steps": 20,
                      "eval_steps": 10, "eval_max_samples": 16, "torch_num_threads": 1},
            "search": {"strategy": "random", "n_trials": 1, "baseline": False,
                       "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lmtune-b6-"))
    quiet_libraries()
    cfg = validate_config(config(root, "warm"))
    objective = FineTuneObjective(cfg)
    objective.prepare()
    warm_up(cfg)
    times: dict[str, list[float]] = {"forked": [], "fresh process": [], "in-process": []}
    for i in range(args.repeats):
        for mode in ("forked", "fresh process"):  # in-process last: it runs torch here, and then forking hangs
            run_cfg = validate_config(config(root, f"{mode}-{i}"))
            start = time.perf_counter()
            if mode == "forked":
                server = TrialServer(run_cfg, objective, [], 1)  # forked at once, before a thread runs
                study = open_study(run_cfg)
                study.optimize(objective, n_trials=1, execute=server)
                server.close()
            else:
                path = root / f"{mode}-{i}.yaml"
                path.write_text(yaml.safe_dump(config(root, f"fresh-{i}")))
                subprocess.run([sys.executable, "-m", "lmtune", "run", str(path), "--quiet", "-o",
                                str(root / "best.yaml")], check=True, capture_output=True, env=os.environ)
            times[mode].append(time.perf_counter() - start)
    for i in range(args.repeats):
        study = open_study(validate_config(config(root, f"in-process-{i}")))
        start = time.perf_counter()
        study.optimize(objective, n_trials=1)
        times["in-process"].append(time.perf_counter() - start)
    print("| trial runs | median s | runs |\n| --- | --- | --- |")
    for mode, t in times.items():
        print(f"| {mode} | {statistics.median(t):.2f} | {', '.join(f'{x:.2f}' for x in t)} |")


if __name__ == "__main__":
    main()
