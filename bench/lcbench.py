"""B2: lmtune's strategies on the LCBench surrogate (YAHPO Gym), through `lmtune.Study` with a user objective.

Each run tunes the 7 LCBench hyperparameters of one OpenML task for `--budget` full-training equivalents (FTE,
1 FTE = 52 epochs; every evaluated epoch counts). The objective reveals epochs 1..52 of the surrogate's learning
curve in order, calls `ctx.report(epoch, ...)` at each and stops as soon as the strategy says so. A configuration
counts for the incumbent only once it was evaluated at epoch 52 (as the surrogate's README asks); the incumbent
trajectory is read at the budget checkpoints 1, 2, 5, 10, 20, 30 FTE.

Normalized regret (%) = 100 * (ref - best) / ref, with ref per task = the max of the two reference columns of
reference_optima.csv and of every epoch-52 value any run in --out found.

DEHB (pip `dehb`) runs through its own ask/tell API (min_fidelity 1, max_fidelity 52, eta 3; fidelities rounded
to whole epochs, each evaluation trains from scratch and costs its fidelity in epochs). `dehb` pins numpy<2, so
it lives in its own venv (`python -m venv V && V/bin/python -m pip install dehb onnxruntime`); the same script
runs there (it imports lmtune only for lmtune's strategies). SMAC3 (pip `smac`, its multi-fidelity facade: random
forest + Hyperband, min_budget 1, max_budget 52, eta 3; ask/tell, fidelities as for DEHB) likewise gets its own venv
(`python -m venv V && V/bin/pip install swig && PATH=V/bin:$PATH V/bin/pip install smac onnxruntime`: its pyrfr
is built from source with swig). The commands behind BENCHMARKS.md:

    .venv/bin/python bench/lcbench.py --seeds 50 --strategies random,tpe,auto,asha,hyperband --jobs 2
    /work/lcbench-dehb-venv/bin/python bench/lcbench.py --seeds 50 --strategies dehb
    /work/lcbench-smac-venv/bin/python bench/lcbench.py --first-seed 20 --seeds 30 --strategies smac \
        --out runs/b2-peers   # issue 13's peers table: the held-out seeds, beside `--main` and dehb there
    .venv/bin/python bench/lcbench.py --sweep --sweep-seeds 20 --strategies auto,asha,tpe --jobs 2
    .venv/bin/python bench/lcbench.py --seeds 50 --strategies random,tpe,auto,asha,hyperband --recommended --jobs 2
    .venv/bin/python bench/lcbench.py --report-only --seeds 50 --per-task --sweep --sweep-seeds 20
    .venv/bin/python bench/lcbench.py --report-only --first-seed 20 --seeds 30   # seeds the sweep did not see

Issue 13 (the new `auto`; `bohb` is the earlier auto), with the commands behind its BENCHMARKS.md section:

    .venv/bin/python bench/lcbench.py --specs 'auto[z=3];auto[z=4];auto[z=6]' --seeds 20 \
        --out runs/lcbench-dev-uncalibrated
    .venv/bin/python bench/lcbench.py --main --specs auto --seeds 50 --out runs/lcbench-b2
    .venv/bin/python bench/lcbench.py --report-only --specs auto --paired auto --seeds 20 --out runs/lcbench-b2
    .venv/bin/python bench/lcbench.py --report-only --specs auto --paired auto --first-seed 20 --seeds 30 \
        --per-task --out runs/lcbench-b2

Issue 13's follow-up probes of the model inside auto (seeds 0..19 only; BENCHMARKS.md, "Probes for the targets"):

    .venv/bin/python bench/lcbench.py --specs 'auto;auto[startup=10];auto[z=9]' --seeds 20 --out runs/auto-dev
    .venv/bin/python bench/lcbench.py --specs 'auto;auto[pw=2];auto[endp=1];auto[ei=8]' --seeds 20 --out runs/auto-dev
    .venv/bin/python bench/lcbench.py --specs 'auto;auto[ei=64];auto[ei=128]' --seeds 20 --out runs/auto-dev
    .venv/bin/python bench/lcbench.py --specs 'auto;auto[endp=1];auto[inner=gp]' --seeds 6 --out runs/auto-dev

Warm-start (warm=1: leave-one-task-out from one source study per other --warm-from task, default the dev list)
and the prior (prior=1: a good baseline, prior=2: a bad one), issue 13's warm-start and bad-prior targets:

    .venv/bin/python bench/lcbench.py --warm-sources --specs 'auto;auto[warm=1];auto[prior=1];auto[prior=2]' \
        --seeds 20 --out runs/b2-warm
    .venv/bin/python bench/lcbench.py --warm-sources --specs 'auto;auto[warm=1];auto[prior=1];auto[prior=2]' \
        --first-seed 20 --seeds 30 --out runs/b2-warm   # held-out seeds
    .venv/bin/python bench/lcbench.py --report-only --specs 'auto;auto[warm=1];auto[prior=1];auto[prior=2]' \
        --paired auto --fte-ratio auto --per-task --seeds 20 --out runs/b2-warm   # and --first-seed 20 --seeds 30
    # tasks outside the dev list (the first five others in encoding.json), warm-started from the 12 dev studies:
    .venv/bin/python bench/lcbench.py --warm-sources --instances 167083,167190,167200,167201,168329 \
        --specs 'auto;auto[warm=1]' --seeds 10 --paired auto --per-task --out runs/b2-warm

A warm=1 record names the tasks it read (`warm_from`); runs are keyed by label, task, seed and budget, so give
each --warm-from list its own --out.

Results are appended to --out (one JSON line per run); runs already there are skipped, so a run can be resumed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(os.environ.get("LCBENCH_DIR", "/work/shared/benchmarks/lcbench"))
DEV_INSTANCES = ("126025", "126026", "126029", "146212", "167104", "167149", "167152", "167161", "167168",
                 "167181", "167184", "167185")
MAX_EPOCH = 52
CHECKPOINTS = (1, 2, 5, 10, 20, 30)
# Surrogate input order after the epoch column (README: epoch, batch_size, learning_rate, momentum,
# weight_decay, num_layers, max_units, max_dropout).
PARAMS = ("batch_size", "learning_rate", "momentum", "weight_decay", "num_layers", "max_units", "max_dropout")
# config_space.json, as lmtune space specs (int low/high make an int dimension).
SPACE: dict[str, dict[str, Any]] = {
    "batch_size": {"low": 16, "high": 512, "log": True},
    "learning_rate": {"low": 1e-4, "high": 0.1, "log": True},
    "momentum": {"low": 0.1, "high": 0.99},
    "weight_decay": {"low": 1e-5, "high": 0.1},
    "num_layers": {"low": 1, "high": 5},
    "max_units": {"low": 64, "high": 1024, "log": True},
    "max_dropout": {"low": 0.0, "high": 1.0},
}
MULTI_FIDELITY = ("bohb", "asha", "hyperband")
EXTERNAL = ("dehb", "smac")  # peers run through their own ask/tell APIs, each in its own venv (module docstring)
MODEL_BASED = ("tpe", "bohb")


# ------------------------------------------------------------------------------------------------ surrogate
class Surrogate:
    """The LCBench ONNX surrogate: one call predicts all 52 epochs of a configuration; cached per configuration."""

    def __init__(self, data: Path = DATA):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(data / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.codes = json.loads((data / "encoding.json").read_text())["OpenML_task_id"]
        self.cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def curve(self, instance: str, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(val_accuracy %, cumulative time s) at epochs 1..52."""
        values = tuple(float(params[p]) for p in PARAMS)
        key = (instance, values)
        if key not in self.cache:
            x_cont = np.empty((MAX_EPOCH, 1 + len(PARAMS)), dtype=np.float32)
            x_cont[:, 0] = np.arange(1, MAX_EPOCH + 1)
            x_cont[:, 1:] = values
            x_cat = np.full((MAX_EPOCH, 1), self.codes[instance], dtype=np.int32)
            out = self.session.run(None, {"x_cat": x_cat, "x_cont": x_cont})[0]
            self.cache[key] = (out[:, 1].astype(float), out[:, 0].astype(float))
        return self.cache[key]


def reference_optima(data: Path = DATA) -> dict[str, float]:
    with open(data / "reference_optima.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        vals = [float(r[c]) for c in ("surr_max_val_acc_ep52_rs500k", "table_max_val_acc") if r[c]]
        out[r["instance"]] = max(vals)
    return out


# ------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Spec:
    """One strategy setting. rf/min_r only for multi-fidelity strategies, startup only for TPE-based ones.

    `auto` (lmtune's default) runs with its shipped settings when min_r, startup, z and ratio are None; a
    value set there replaces that setting of its pruner (`ExtrapolationPruner`: min_resource, z, check_ratio)
    or its TPE (startup), which is how its defaults were tuned.
    """

    strategy: str
    rf: int | None = None
    min_r: int | None = None
    startup: int | None = None
    z: float | None = None
    z0: float | None = None
    ratio: float | None = None
    rand: float | None = None  # auto only: the share of uniformly random trials
    plain: int | None = None  # auto only: 1 = its model sees pruned trials as Optuna's samplers do (ablation)
    warm: int | None = None  # 1 = warm-start from one study per other development task (leave-one-task-out)
    prior: int | None = None  # baseline (trial 0 and the prior): 1 = good, 2 = bad (see `prior_config`)
    # auto only, the model inside CurveSampler (issue 13 follow-up probes): inner=tpe is TPE alone (auto before
    # the GP), inner=gp the GP alone; ei / pw / endp are TPE's n_ei_candidates / prior_weight / consider_endpoints
    inner: str | None = None
    ei: int | None = None
    pw: float | None = None
    endp: int | None = None

    @property
    def label(self) -> str:
        extra = []
        if self.rf is not None:
            extra += [f"rf={self.rf}", f"min={self.min_r}"]
        elif self.min_r is not None:
            extra.append(f"min={self.min_r}")
        for key in ("startup", "z", "z0", "ratio", "rand", "plain", "warm", "prior", "inner", "ei", "pw", "endp"):
            value = getattr(self, key)
            if value is not None:
                extra.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        return self.strategy + (f"[{','.join(extra)}]" if extra else "")

    @classmethod
    def parse(cls, label: str) -> Spec:
        """The Spec of a label such as ``auto[min=3,z=0.5]`` (the inverse of `label`)."""
        name, _, rest = label.partition("[")
        fields: dict[str, Any] = {}
        for item in filter(None, rest.rstrip("]").split(",")):
            key, _, value = item.partition("=")
            key = {"min": "min_r"}.get(key.strip(), key.strip())
            floats = ("z", "z0", "ratio", "rand", "pw")
            fields[key] = value.strip() if key == "inner" else float(value) if key in floats else int(value)
        return cls(name.strip(), **fields)


def default_spec(strategy: str, rf: int = 3, min_r: int = 1, startup: int = 10) -> Spec:
    if strategy in EXTERNAL:
        return Spec(strategy, rf=rf, min_r=1)  # eta = rf; their minimum fidelity is fixed at 1 epoch here
    return Spec(strategy, rf=rf if strategy in MULTI_FIDELITY else None,
                min_r=min_r if strategy in MULTI_FIDELITY else None,
                startup=startup if strategy in MODEL_BASED else None)


_SURROGATE: Surrogate | None = None


def _surrogate() -> Surrogate:
    global _SURROGATE
    if _SURROGATE is None:
        _SURROGATE = Surrogate()
    _SURROGATE.cache.clear()  # per run: bounded memory, and the same time cost for every run
    return _SURROGATE


def run_lmtune(spec: Spec, instance: str, seed: int, budget: float) -> dict[str, Any]:
    """One lmtune.Study on one task; the epoch-52 evaluations in trial order with the cumulative epochs spent."""
    import lmtune

    surrogate = _surrogate()
    kwargs: dict[str, Any] = {"max_resource": MAX_EPOCH}
    if spec.rf is not None:
        kwargs.update(reduction_factor=spec.rf, min_resource=spec.min_r)
    if spec.startup is not None:
        kwargs["n_startup_trials"] = spec.startup
    if spec.strategy == "auto" and spec.min_r is not None:
        kwargs["min_resource"] = spec.min_r
    if spec.prior:
        kwargs["baseline"] = prior_config(instance, good=spec.prior == 1)
    sources = warm_sources(instance) if spec.warm else []
    if sources:
        kwargs["warm_start"] = [{"study": f"src-{t}", "storage": os.environ[WARM_ENV]} for t in sources]
    study = lmtune.Study(f"lcbench-{instance}-{spec.label}-{seed}", "memory://", space=SPACE,
                         strategy=spec.strategy, metric="val_accuracy", direction="maximize", seed=seed, **kwargs)
    if spec.strategy == "auto" and (spec.z is not None or spec.ratio is not None or spec.z0 is not None):
        from lmtune.strategies._lc_pruner import ExtrapolationPruner

        shipped = study.optuna.pruner
        assert isinstance(shipped, ExtrapolationPruner)
        study.optuna.pruner = ExtrapolationPruner(
            min_resource=shipped.min_resource, max_resource=MAX_EPOCH,
            z=shipped.z if spec.z is None else spec.z,
            check_ratio=shipped.check_ratio if spec.ratio is None else spec.ratio,
            z_start=spec.z0 if spec.z0 is not None else spec.z if spec.z is not None else shipped.z_start)
    if spec.strategy == "auto" and spec.rand is not None:
        from lmtune.strategies._lc_sampler import CurveSampler

        curves = study.optuna.sampler
        assert isinstance(curves, CurveSampler)
        curves.random_fraction = spec.rand
    if spec.strategy == "auto" and (spec.inner or spec.ei or spec.pw is not None or spec.endp is not None):
        replace_inner(study.optuna.sampler, spec, seed)
    if spec.strategy == "auto" and spec.plain:
        study.optuna.sampler = study.optuna.sampler.inner  # type: ignore[attr-defined]

    start = time.perf_counter()
    study.optimize(make_objective(surrogate, instance), budget_fte=budget)
    elapsed = time.perf_counter() - start
    spent, events, states = 0, [], {}
    for t in sorted(study.trials, key=lambda t: t.number):
        states[t.state.name] = states.get(t.state.name, 0) + 1
        epochs = int(t.user_attrs.get("epochs", 0))
        spent += epochs
        if epochs == MAX_EPOCH:
            events.append([spent, float(t.user_attrs["metrics"]["val_accuracy"])])
    out = {"events": events, "epochs": spent, "trials": len(study.trials), "states": states, "seconds": elapsed}
    return out | ({"warm_from": sources} if spec.warm else {})


def make_objective(surrogate: Surrogate, instance: str) -> Any:
    """The objective of one task: reveals the surrogate's curve epoch by epoch until the strategy stops it."""
    import lmtune

    def objective(ctx: lmtune.TrialContext) -> dict[str, float]:
        acc, seconds = surrogate.curve(instance, ctx.params)
        epoch = 0
        for epoch in range(1, MAX_EPOCH + 1):
            if ctx.report(epoch, {"val_accuracy": acc[epoch - 1]}):
                break
        ctx.set("cost", {"fte": epoch / MAX_EPOCH, "wall_seconds": float(seconds[epoch - 1])})
        ctx.set("epochs", epoch)
        return {"val_accuracy": float(acc[epoch - 1])}

    return objective


def replace_inner(sampler: Any, spec: Spec, seed: int) -> None:
    """Swap the model inside auto's CurveSampler for the probe `spec` names (same seed and startup trials):
    inner=tpe is TPE alone (`auto` before it chose the GP for small studies), inner=gp the GP alone (never
    switching to TPE), both warm-started when the run is; ei / pw / endp set a new TPE's knobs (not warm)."""
    import warnings

    import optuna

    from lmtune.strategies._lc_sampler import CurveSampler
    from lmtune.strategies._model_choice import ModelChoice

    assert isinstance(sampler, CurveSampler) and isinstance(sampler.inner, ModelChoice)
    if spec.inner == "gp":
        sampler.inner = sampler.inner.gp
        return
    assert spec.inner in (None, "tpe"), spec.inner
    knobs: dict[str, Any] = {}
    if spec.ei:
        knobs["n_ei_candidates"] = spec.ei
    if spec.pw is not None:
        knobs["prior_weight"] = spec.pw
    if spec.endp is not None:
        knobs["consider_endpoints"] = bool(spec.endp)
    if not knobs:
        sampler.inner = sampler.inner.tpe  # warm-started too when the run is
        return
    startup = sampler.inner.tpe._n_startup_trials  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler.inner = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                                   group=True, **knobs)


def prior_config(instance: str, good: bool) -> dict[str, Any]:
    """A user's baseline for the prior experiment: good = the best epoch-52 configuration of this task's source
    study (an earlier tuning run of the same task, seed WARM_SEED); bad = the worst at epoch 52 of 200 random
    configurations (numpy seed WARM_SEED)."""
    import optuna

    if good:
        study = optuna.load_study(study_name=f"src-{instance}", storage=os.environ[WARM_ENV])
        return dict(study.best_trial.params)
    rng = np.random.default_rng(WARM_SEED)
    surrogate = Surrogate()
    worst: tuple[float, dict[str, Any]] | None = None
    for _ in range(200):
        params: dict[str, Any] = {}
        for name, d in SPACE.items():
            lo, hi = float(d["low"]), float(d["high"])
            x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if d.get("log") else rng.uniform(lo, hi)
            params[name] = int(round(x)) if isinstance(d["low"], int) else float(x)
        final = float(surrogate.curve(instance, params)[0][-1])
        if worst is None or final < worst[0]:
            worst = (final, params)
    assert worst is not None
    return worst[1]


WARM_ENV = "LCBENCH_WARM_DB"
WARM_FROM_ENV = "LCBENCH_WARM_FROM"  # comma list of the tasks whose source studies warm=1 reads (--warm-from)
WARM_SEED = 1000  # the source studies' search seed, apart from every benchmark seed


def warm_sources(instance: str) -> list[str]:
    """The tasks whose source studies a warm=1 run on `instance` reads: --warm-from without the task itself
    (leave-one-task-out when the task is in that list)."""
    return [t for t in os.environ.get(WARM_FROM_ENV, ",".join(DEV_INSTANCES)).split(",") if t and t != instance]


def make_warm_sources(out: Path, instances: list[str]) -> str:
    """One shipped-`auto` study of 30 FTE per task (seed WARM_SEED) in a SQLite file: the past studies that
    warm-starting reads (every other listed task's study, never the task's own) and prior=1 takes its good
    baseline from (the task's own)."""
    import lmtune

    url = f"sqlite:///{(out / 'warm-sources.db').resolve()}"
    for instance in instances:
        study = lmtune.Study(f"src-{instance}", url, space=SPACE, strategy="auto", metric="val_accuracy",
                             direction="maximize", seed=WARM_SEED, max_resource=MAX_EPOCH)
        # Resumed: nothing runs once the budget is spent.
        study.optimize(make_objective(_surrogate(), instance), budget_fte=30)
    return url


def config_space(seed: int) -> Any:
    """LCBench's space as a ConfigSpace (DEHB's and SMAC3's form of it)."""
    from ConfigSpace import ConfigurationSpace, Float, Integer

    cs = ConfigurationSpace(seed=seed)
    for name, d in SPACE.items():
        make = Integer if isinstance(d["low"], int) else Float
        cs.add(make(name, (d["low"], d["high"]), log=bool(d.get("log", False))))
    return cs


def run_ask_tell(ask: Any, tell: Any, instance: str, budget: float) -> dict[str, Any]:
    """A peer's run through its ask/tell API. `ask()` gives (job, config, fidelity in epochs); each evaluation
    trains the config from scratch for the fidelity, rounded, and costs that many epochs; `tell(job, accuracy at
    that epoch, epochs)` reports it."""
    surrogate = _surrogate()
    start = time.perf_counter()
    spent, events, n = 0, [], 0
    while spent < budget * MAX_EPOCH:
        job, config, fidelity = ask()
        epochs = min(MAX_EPOCH, max(1, int(round(float(fidelity)))))
        acc, _ = surrogate.curve(instance, dict(config))
        spent += epochs
        n += 1
        if epochs == MAX_EPOCH:
            events.append([spent, float(acc[-1])])
        tell(job, float(acc[epochs - 1]), epochs)
    return {"events": events, "epochs": spent, "trials": n, "states": {}, "seconds": time.perf_counter() - start}


def run_dehb(spec: Spec, instance: str, seed: int, budget: float) -> dict[str, Any]:
    """DEHB (differential evolution + Hyperband); it minimizes, so it is told the negative accuracy."""
    from dehb import DEHB

    with tempfile.TemporaryDirectory() as tmp:
        opt = DEHB(cs=config_space(seed), dimensions=len(SPACE), min_fidelity=spec.min_r or 1,
                   max_fidelity=MAX_EPOCH, eta=spec.rf or 3, n_workers=1, seed=seed, output_path=tmp,
                   log_level="ERROR", save_freq=None)

        def ask() -> tuple[Any, Any, float]:
            job = opt.ask()
            return job, job["config"], job["fidelity"]

        return run_ask_tell(ask, lambda job, acc, epochs: opt.tell(job, {"fitness": -acc, "cost": float(epochs)}),
                            instance, budget)


def run_smac(spec: Spec, instance: str, seed: int, budget: float) -> dict[str, Any]:
    """SMAC3's multi-fidelity facade (random forest + Hyperband); it minimizes, so it is told the negative
    accuracy."""
    from smac import MultiFidelityFacade, Scenario
    from smac.runhistory.dataclasses import TrialValue

    def never_called(config: Any, seed: int = 0, budget: float = 0.0) -> float:  # ask/tell evaluates itself
        raise RuntimeError("SMAC's target function is not used with ask/tell")

    with tempfile.TemporaryDirectory() as tmp:
        scenario = Scenario(config_space(seed), deterministic=True, n_trials=1_000_000, min_budget=spec.min_r or 1,
                            max_budget=MAX_EPOCH, seed=seed, output_directory=Path(tmp) / "smac")
        smac = MultiFidelityFacade(scenario, never_called, overwrite=True, logging_level=False,
                                   intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=spec.rf or 3))

        def ask() -> tuple[Any, Any, float]:
            info = smac.ask()
            return info, info.config, info.budget

        return run_ask_tell(ask, lambda info, acc, epochs: smac.tell(info, TrialValue(cost=-acc)), instance, budget)


def run_one(task: tuple[Spec, str, int, float]) -> dict[str, Any]:
    spec, instance, seed, budget = task
    runner = {"dehb": run_dehb, "smac": run_smac}.get(spec.strategy, run_lmtune)
    out = runner(spec, instance, seed, budget)
    return {"label": spec.label, "spec": asdict(spec), "instance": instance, "seed": seed, "budget": budget, **out}


# ------------------------------------------------------------------------------------------------ storage
def load_records(out: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(out.glob("*.jsonl")):
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def run_tasks(tasks: list[tuple[Spec, str, int, float]], out: Path, jobs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["label"], r["instance"], r["seed"], r["budget"]) for r in load_records(out)}
    todo = [t for t in tasks if (t[0].label, t[1], t[2], t[3]) not in done]
    print(f"{len(tasks) - len(todo)} of {len(tasks)} runs already in {out}; running {len(todo)}", file=sys.stderr)
    if not todo:
        return
    start = time.perf_counter()
    pool = mp.get_context("spawn").Pool(jobs) if jobs > 1 else None
    results = pool.imap_unordered(run_one, todo) if pool else map(run_one, todo)
    try:
        for i, rec in enumerate(results, 1):
            name = rec["spec"]["strategy"] + ("" if rec["label"] in DEFAULT_LABELS else
                                              "-main" if rec["label"] in MAIN_LABELS else "-sweep")
            with open(out / f"{name}.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if i % 20 == 0 or i == len(todo):
                print(f"  {i}/{len(todo)} runs, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    finally:
        if pool:
            pool.close()
            pool.join()


# Chosen from the sweep (seeds 0..19) and checked with --recommended on all main seeds (see BENCHMARKS.md).
RECOMMENDED = (Spec("tpe", startup=5), Spec("bohb", rf=3, min_r=9, startup=5), Spec("asha", rf=3, min_r=3),
               Spec("hyperband", rf=3, min_r=9))
DEFAULT_LABELS = {default_spec(s).label for s in ("random", "tpe", "bohb", "asha", "hyperband", *EXTERNAL, "auto")}
# Issue 13's comparison: the earlier strategies at their best B2 settings (bohb = the earlier auto, with its
# shipped min_resource 1 and the sweep's 9). The new `auto` runs beside them with `--specs auto`.
MAIN = (Spec("random"), Spec("tpe", startup=5), Spec("bohb", rf=3, min_r=9, startup=5),
        Spec("bohb", rf=3, min_r=1, startup=5), Spec("asha", rf=3, min_r=3))
MAIN_LABELS = {s.label for s in MAIN}


# ------------------------------------------------------------------------------------------------ report
def references(records: list[dict[str, Any]]) -> dict[str, float]:
    ref = reference_optima()
    for r in records:
        for _, value in r["events"]:
            ref[r["instance"]] = max(ref.get(r["instance"], value), value)
    return ref


def regret_at(rec: dict[str, Any], ref: float, budget_fte: float) -> float | None:
    """Normalized regret (%) of the best epoch-52 value found within `budget_fte`; None if there is none yet."""
    limit = budget_fte * MAX_EPOCH + 1e-9
    values = [v for spent, v in rec["events"] if spent <= limit]
    return 100.0 * (ref - max(values)) / ref if values else None


def summarize(records: list[dict[str, Any]], ref: dict[str, float], budget_fte: float) -> dict[str, Any]:
    regrets = [regret_at(r, ref[r["instance"]], budget_fte) for r in records]
    have = [x for x in regrets if x is not None]
    return {"n": len(regrets), "k": len(have), "mean": statistics.fmean(have) if have else math.nan,
            "median": statistics.median(have) if have else math.nan,
            "se": statistics.stdev(have) / math.sqrt(len(have)) if len(have) > 1 else math.nan}


def cell(s: dict[str, Any], key: str) -> str:
    if not s["k"]:
        return f"— [0/{s['n']}]"
    text = f"{s[key]:.2f}"
    return text if s["k"] == s["n"] else f"{text} [{s['k']}/{s['n']}]"


def group(records: list[dict[str, Any]], labels: list[str], instances: list[str], seeds: list[int],
          budget: float) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["label"] in labels and r["instance"] in instances and r["seed"] in seeds and r["budget"] == budget:
            out.setdefault(r["label"], []).append(r)
    return out


def main_table(records: list[dict[str, Any]], ref: dict[str, float], labels: list[str], instances: list[str],
               seeds: list[int], budget: float) -> str:
    groups = group(records, labels, instances, seeds, budget)
    checkpoints = [c for c in CHECKPOINTS if c < budget] + [budget]
    head = ("| strategy | runs | " + " | ".join(f"{c:g} FTE" for c in checkpoints)
            + f" | s.e. of mean @{checkpoints[-1]:g} | trials/run | s/run |")
    lines = [head, "|" + "---|" * (len(checkpoints) + 5)]
    for label in labels:
        recs = groups.get(label, [])
        if not recs:
            continue
        stats = [summarize(recs, ref, c) for c in checkpoints]
        means = " | ".join(f"{cell(s, 'mean')} / {cell(s, 'median')}" for s in stats)
        trials = statistics.fmean(r["trials"] for r in recs)
        secs = statistics.fmean(r["seconds"] for r in recs)
        lines.append(f"| {label} | {len(recs)} | {means} | {stats[-1]['se']:.2f} | {trials:.0f} | {secs:.1f} |")
    return "\n".join(lines)


def task_table(records: list[dict[str, Any]], ref: dict[str, float], labels: list[str], instances: list[str],
               seeds: list[int], budget: float, at: float | None = None) -> str:
    """Mean normalized regret (%) per task at `at` FTE (default: the full budget) of runs of `budget` FTE."""
    at = budget if at is None else at
    groups = group(records, labels, instances, seeds, budget)
    shown = [label for label in labels if label in groups]
    lines = ["| task | ref (%) | " + " | ".join(shown) + " |", "|" + "---|" * (2 + len(shown))]
    for inst in instances:
        cells = []
        for label in shown:
            stat = summarize([r for r in groups[label] if r["instance"] == inst], ref, at)
            cells.append(cell(stat, "mean"))
        lines.append(f"| {inst} | {ref[inst]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(records: list[dict[str, Any]], ref: dict[str, float], label: str, labels: list[str],
                 instances: list[str], seeds: list[int], budget: float) -> str:
    groups = group(records, [label, *labels], instances, seeds, budget)
    points = [c for c in (10, 30) if c <= budget]
    lines = ["| vs | pairs | " + " | ".join(f"Δ @{c} FTE" for c in points) + " |", "|" + "---|" * (2 + len(points))]
    for other in labels:
        if other == label or other not in groups or label not in groups:
            continue
        cells = []
        for c in points:
            delta, se = paired_delta(groups[label], groups[other], ref, c)
            cells.append(f"{delta:+.2f} ± {se:.2f}")
        pairs = {(r["instance"], r["seed"]) for r in groups[label]} & {(r["instance"], r["seed"])
                                                                        for r in groups[other]}
        lines.append(f"| {other} | {len(pairs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_to_reach(recs: list[dict[str, Any]], ref: dict[str, float], level: float, budget: float) -> float | None:
    """The smallest budget (FTE, to the epoch) by which every run has an epoch-52 value and the mean regret is
    <= `level`; None if not within `budget`. Both conditions only become true as the budget grows, so bisect."""
    def reached(epochs: int) -> bool:
        s = summarize(recs, ref, epochs / MAX_EPOCH)
        return s["k"] == s["n"] and s["mean"] <= level

    lo, hi = 0, int(round(budget * MAX_EPOCH))
    if not recs or not reached(hi):
        return None
    while hi - lo > 1:  # invariant: not reached at lo (0 epochs never is), reached at hi
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return hi / MAX_EPOCH


def fte_ratio_table(records: list[dict[str, Any]], ref: dict[str, float], label: str, labels: list[str],
                    instances: list[str], seeds: list[int], budget: float, longer: float | None = None) -> str:
    """For each level = `label`'s mean regret at 5, 10 and 30 FTE: the FTE each setting needs to reach it and
    the ratio to what `label` itself needs (both to the epoch, by `budget_to_reach`). With `longer`, the other
    settings' runs are those of that budget, so a setting slower than `label` can still show how much slower."""
    groups = group(records, [label], instances, seeds, budget)
    if label not in groups:
        return f"(no runs of {label})"
    reach = longer or budget
    groups |= {k: v for k, v in group(records, labels, instances, seeds, reach).items() if k != label}
    points = [c for c in (5, 10, 30) if c <= budget]
    lines = ["| setting | " + " | ".join(f"FTE to {label}'s @{c} FTE | ratio" for c in points) + " |",
             "|" + "---|" * (1 + 2 * len(points))]
    levels = [summarize(groups[label], ref, c)["mean"] for c in points]
    own = [budget_to_reach(groups[label], ref, level, budget) for level in levels]
    for other in dict.fromkeys([label, *labels]):
        if other not in groups:
            continue
        cells = []
        for level, base in zip(levels, own, strict=True):
            limit = budget if other == label else reach
            fte = budget_to_reach(groups[other], ref, level, limit)
            ratio = "—" if base is None else f"> {limit / base:.2f}" if fte is None else f"{fte / base:.2f}"
            cells.append(f"{f'> {limit:g}' if fte is None else f'{fte:.2f}'} | {ratio}")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return f"levels (mean regret %): {', '.join(f'{x:.2f}' for x in levels)}\n\n" + "\n".join(lines)


def sweep_specs() -> list[Spec]:
    specs = [default_spec(s, rf=rf, min_r=m) for s in ("bohb", "asha") for rf in (2, 3, 4) for m in (1, 3, 9)]
    specs += [default_spec(s, startup=k) for s in ("tpe", "bohb") for k in (5, 10, 20)]
    return list(dict.fromkeys(specs))


def paired_delta(recs: list[dict[str, Any]], base: list[dict[str, Any]], ref: dict[str, float],
                 budget_fte: float) -> tuple[float, float]:
    """Mean and s.e. of (regret - regret of the default setting) over the same (task, seed) pairs."""
    base_by = {(r["instance"], r["seed"]): regret_at(r, ref[r["instance"]], budget_fte) for r in base}
    diffs = []
    for r in recs:
        a, b = regret_at(r, ref[r["instance"]], budget_fte), base_by.get((r["instance"], r["seed"]))
        if a is not None and b is not None:
            diffs.append(a - b)
    if len(diffs) < 2:
        return math.nan, math.nan
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def sweep_table(records: list[dict[str, Any]], ref: dict[str, float], instances: list[str], seeds: list[int],
                budget: float) -> str:
    specs = sweep_specs()
    groups = group(records, [s.label for s in specs], instances, seeds, budget)
    points = [c for c in (10, 30) if c <= budget] or [budget]
    head = "| setting | runs | " + " | ".join(
        f"mean ± s.e. @{c} FTE | median @{c} FTE | Δ vs default @{c} FTE" for c in points) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(points))]
    best: dict[tuple[str, str, float], tuple[float, str]] = {}
    for spec in specs:
        recs = groups.get(spec.label, [])
        if not recs:
            continue
        base = groups.get(default_spec(spec.strategy).label, [])
        stats = [summarize(recs, ref, c) for c in points]
        kinds = []
        if spec.rf is not None and spec.startup in (None, 10):
            kinds.append("reduction_factor x min_resource")
        if spec.startup is not None and spec.rf in (None, 3) and spec.min_r in (None, 1):
            kinds.append("n_startup_trials")
        cells = []
        for c, s in zip(points, stats, strict=True):
            delta, delta_se = paired_delta(recs, base, ref, c)
            cells.append(f"{cell(s, 'mean')} ± {s['se']:.2f} | {cell(s, 'median')} | {delta:+.2f} ± {delta_se:.2f}")
            if s["k"] == s["n"]:
                for k in kinds:
                    key = (spec.strategy, k, c)
                    if key not in best or s["mean"] < best[key][0]:
                        best[key] = (s["mean"], f"{spec.label} ({s['mean']:.2f} ± {s['se']:.2f} %, "
                                                f"{delta:+.2f} ± {delta_se:.2f} vs default)")
        lines.append(f"| {spec.label} | {len(recs)} | {' | '.join(cells)} |")
    lines.append("")
    lines.append("Lowest mean regret per sweep (Δ: paired difference to the default on the same task and seed):")
    lines.append("")
    for (strategy, kind, c), (_, text) in sorted(best.items()):
        lines.append(f"- {strategy}, {kind}, at {c} FTE: {text}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per strategy and task (main table)")
    p.add_argument("--first-seed", type=int, default=0, help="main seeds are first..first+N-1 (e.g. held-out seeds)")
    p.add_argument("--budget", type=float, default=30.0, help="budget per run in full-training equivalents")
    p.add_argument("--strategies", default="random,tpe,auto,asha,dehb",
                   help="comma list of random, tpe, auto, asha, hyperband, dehb, smac (defaults: rf 3, min 1, "
                        "startup 10)")
    p.add_argument("--instances", default=",".join(DEV_INSTANCES), help="OpenML task ids (default: the 12 dev)")
    p.add_argument("--sweep", action="store_true",
                   help="sweep reduction factor {2,3,4} x min resource {1,3,9} (auto, asha) and startup trials "
                        "{5,10,20} (tpe, auto) instead of the main grid")
    p.add_argument("--recommended", action="store_true",
                   help="also run the settings chosen from the sweep (RECOMMENDED) on the main seeds")
    p.add_argument("--sweep-seeds", type=int, default=5, help="seeds 0..N-1 per setting in the sweep")
    p.add_argument("--main", action="store_true",
                   help="run issue 13's baselines (MAIN: random, tpe, bohb, asha at their best earlier settings) "
                        "on the main seeds instead of --strategies; add --specs auto for the new auto")
    p.add_argument("--specs", default="",
                   help="';'-separated settings to run on the main seeds, as labels: 'auto[min=3,z=0.5];tpe'")
    p.add_argument("--per-task", action="store_true", help="also print mean regret per task at the full budget")
    p.add_argument("--paired", default="",
                   help="print the paired difference (same task and seed) of this setting's regret to each other "
                        "setting's, at 10 and 30 FTE, e.g. --paired auto")
    p.add_argument("--fte-ratio", default="",
                   help="print, for this setting's mean regret at 5, 10 and 30 FTE, the FTE each setting needs to "
                        "reach it (to the epoch) and the ratio to this setting's own, e.g. --fte-ratio auto")
    p.add_argument("--ratio-budget", type=float, default=None,
                   help="--fte-ratio reads the other settings' runs of this (longer) budget, e.g. 45 to see whether "
                        "a setting reaches the base's 30-FTE regret within 1.5x (run them with --budget 45 first)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--out", type=Path, default=Path("runs/lcbench"), help="folder for the JSON-lines results")
    p.add_argument("--report-only", action="store_true", help="print the tables from --out without running")
    p.add_argument("--warm-sources", action="store_true",
                   help="make (or reuse) --out/warm-sources.db, the past studies that settings with warm=1 read "
                        "(one per --warm-from task) and prior=1 takes its baseline from (one per --instances task)")
    p.add_argument("--warm-from", default=",".join(DEV_INSTANCES),
                   help="OpenML task ids whose source studies warm=1 reads, a run's own task always left out "
                        "(default: the 12 dev, i.e. leave-one-task-out on them)")
    args = p.parse_args(argv)

    instances = [i.strip() for i in args.instances.split(",") if i.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for peer in EXTERNAL:
        if peer in strategies and not args.report_only and importlib.util.find_spec(peer) is None:
            print(f"{peer} is not installed in this interpreter; skipping it (see the module docstring)",
                  file=sys.stderr)
            strategies.remove(peer)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    extra_specs = [Spec.parse(x) for x in args.specs.split(";") if x.strip()]
    sweep_seeds = list(range(args.sweep_seeds))
    warm_from = [i.strip() for i in args.warm_from.split(",") if i.strip()]
    os.environ[WARM_FROM_ENV] = ",".join(warm_from)  # read by the runs (worker processes inherit it)
    if args.warm_sources and not args.report_only:
        args.out.mkdir(parents=True, exist_ok=True)
        own = instances if any(s.prior == 1 for s in extra_specs) else []
        os.environ[WARM_ENV] = make_warm_sources(args.out, list(dict.fromkeys(warm_from + own)))
    if not args.report_only:
        if args.sweep:
            tasks = [(s, i, seed, args.budget) for s in sweep_specs() if s.strategy in strategies
                     for i in instances for seed in sweep_seeds]
        elif args.main or args.specs:
            tasks = []
        else:
            tasks = [(default_spec(s), i, seed, args.budget) for s in strategies for i in instances for seed in seeds]
        chosen = (list(MAIN) if args.main else []) + extra_specs
        tasks += [(s, i, seed, args.budget) for s in chosen for i in instances for seed in seeds]
        if args.recommended:
            tasks += [(s, i, seed, args.budget) for s in RECOMMENDED if s.strategy in strategies
                      for i in instances for seed in seeds]
        run_tasks(tasks, args.out, args.jobs)

    records = load_records(args.out)
    ref = references(records)
    labels = [default_spec(s).label for s in ("random", "tpe", "bohb", "asha", "hyperband", *EXTERNAL)]
    labels += [s.label for s in (*RECOMMENDED, *MAIN, Spec("auto"), *extra_specs)]
    labels = list(dict.fromkeys(labels))
    print(f"## Normalized regret (%) at budget checkpoints, mean / median over {len(instances)} tasks x "
          f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]}) ([k/n]: only k of n runs had an epoch-52 evaluation yet)\n")
    print(main_table(records, ref, labels, instances, seeds, args.budget))
    if args.paired:
        print(f"\n## Paired difference of {args.paired} to each setting (regret % points, mean ± s.e.; negative: "
              f"{args.paired} is better), {len(seeds)} seeds\n")
        print(paired_table(records, ref, args.paired, labels, instances, seeds, args.budget))
    if args.fte_ratio:
        print(f"\n## FTE to reach {args.fte_ratio}'s mean regret at 5, 10, 30 FTE (all runs with an epoch-52 "
              f"value; ratio to {args.fte_ratio}'s own FTE), {len(seeds)} seeds\n")
        print(fte_ratio_table(records, ref, args.fte_ratio, labels, instances, seeds, args.budget, args.ratio_budget))
    if args.per_task:
        for c in sorted({min(10.0, args.budget), args.budget}):
            print(f"\n## Mean normalized regret (%) per task at {c:g} FTE, {len(seeds)} seeds\n")
            print(task_table(records, ref, labels, instances, seeds, args.budget, c))
    if args.sweep:
        print(f"\n## Sweep: normalized regret (%), {len(instances)} tasks x {len(sweep_seeds)} seeds\n")
        print(sweep_table(records, ref, instances, sweep_seeds, args.budget))


if __name__ == "__main__":
    main()
