"""Trials as Ray tasks: `lmtune run --executor ray [--address auto]` (needs `pip install 'lmtune[ray]'`).

This process asks Optuna for trials, in as many threads as the cluster has room for, and keeps each trial's
heartbeat; every trial is a Ray task with `num_cpus`/`num_gpus` requests that attaches to the trial in the
shared storage, trains, and reports through it. Ray must reach the same storage URL from every node, and the
nodes need lmtune installed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from typing import Any

import optuna

from lmtune import records
from lmtune.config import ExperimentConfig
from lmtune.errors import ConfigError
from lmtune.executors import Outcome, TrialError, TrialSpec, run_attached, settle, worker_name
from lmtune.quiet import quiet_libraries
from lmtune.storage import mask_url
from lmtune.study import Callback, Objective, Study, TrialContext, optimize_config
from lmtune.trial import FineTuneObjective

_objectives: dict[str, Any] = {}  # one prepared objective per config, per Ray worker process


def _run_task(cfg_json: str, spec: TrialSpec, pruner: optuna.pruners.BasePruner, threads: int) -> Outcome:
    import torch

    torch.set_num_threads(threads)
    if cfg_json not in _objectives:
        quiet_libraries()
        _objectives[cfg_json] = FineTuneObjective(ExperimentConfig.model_validate_json(cfg_json))
    objective = _objectives[cfg_json]
    trial_worker = f"ray:{worker_name()}"
    return run_attached(_tagged(objective, trial_worker), objective.cfg, spec, pruner)


def _tagged(objective: Objective, name: str) -> Objective:
    def run(ctx: TrialContext) -> Any:
        ctx.set(records.WORKER, name)
        return objective(ctx)

    return run


def connect(address: str | None) -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor.type ray needs Ray: pip install 'lmtune[ray]'") from None
    if not ray.is_initialized():
        try:
            if address is None:
                ray.init(address="local", include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"executor.address {mask_url(str(address))!r}: cannot connect to Ray: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}; start "
                              "the cluster with `ray start --head` or leave the address out for a local Ray") from None
    return ray


def run_on_ray(cfg: ExperimentConfig, study: Study, objective: Objective, callbacks: Iterable[Callback] = ()) -> None:
    """Run the study's remaining trials as Ray tasks, as many at once as the cluster's CPUs/GPUs allow."""
    ray = connect(cfg.executor.address)
    ex = cfg.executor
    resources = ray.cluster_resources()
    cpus = ex.threads_per_trial or 1
    gpus = ex.gpus_per_trial if resources.get("GPU") else 0
    parallel = ex.workers or max(1, int(resources["GPU"] // gpus if gpus else resources.get("CPU", 1) // cpus))
    task = ray.remote(_run_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    cfg_json = cfg.model_dump_json()

    running: dict[int, Any] = {}  # trial number -> the Ray task training it
    stopping = threading.Event()

    def execute(_objective: Objective, ctx: TrialContext) -> float:
        if stopping.is_set():
            raise TrialError(study.requeue_interrupted(ctx.trial))
        running[ctx.number] = ref = task.remote(cfg_json, TrialSpec.of(ctx), study.optuna.pruner, cpus)
        if stopping.is_set():  # Ctrl-C came while the task was submitted
            ray.cancel(ref, force=True)
        try:
            outcome = ray.get(ref)
        except Exception as e:  # the task's worker crashed or was killed: its trial fails with the reason
            if stopping.is_set():
                raise TrialError(study.requeue_interrupted(ctx.trial)) from None
            first = (str(e).strip().splitlines() or [""])[0]
            reason = mask_url(f"ray task failed: {type(e).__name__}: {first}")[:2000]
            ctx.set(records.FAIL_REASON, reason)
            raise TrialError(reason) from None
        finally:
            running.pop(ctx.number, None)
        return settle(outcome)

    # Trials wait on their tasks in threads, and Optuna waits for those threads before a KeyboardInterrupt leaves
    # `optimize`: so Ctrl-C first cancels the running tasks, whose trials are then failed and queued again.
    previous = signal.getsignal(signal.SIGINT)

    def cancel_then_interrupt(signum: int, frame: Any) -> None:
        stopping.set()
        study.optuna.stop()  # threads waiting for room in the budget start no trial (they would re-queue it)
        for ref in list(running.values()):
            ray.cancel(ref, force=True)
        previous(signum, frame)  # type: ignore[operator]

    # Only the main thread may set a handler; a program that ignores SIGINT (a background job) keeps ignoring it.
    catches = threading.current_thread() is threading.main_thread() and callable(previous)
    if catches:
        signal.signal(signal.SIGINT, cancel_then_interrupt)
    try:
        optimize_config(cfg, study, objective, callbacks, execute, n_jobs=parallel)
    finally:
        if catches:
            signal.signal(signal.SIGINT, previous)
