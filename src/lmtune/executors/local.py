"""Local workers: long-lived processes that each run one trial at a time in a child forked for that trial.

A fresh Python process pays ~10 s importing torch and transformers before it trains. A worker pays that once,
encodes the data once, and has a child forked per trial (by its trial server, below): the child starts with
everything loaded, and when it exits the trial's memory, host and GPU, goes with it. The worker itself never
computes with torch nor touches CUDA, because neither GNU OpenMP's thread pool nor a CUDA context survives a
fork once used.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import optuna

from lmtune import records
from lmtune.config import ExperimentConfig
from lmtune.errors import LmtuneError
from lmtune.executors import TrialError, TrialSpec, run_attached, settle, worker_name
from lmtune.quiet import quiet_libraries
from lmtune.study import Callback, Objective, Study, TrialContext, open_tuning_study, optimize_config
from lmtune.trial import FineTuneObjective

_PR_SET_PDEATHSIG = 1


def visible_gpus() -> list[str]:
    """The GPUs this process may give to trials. NVML counts them without creating a CUDA context."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpus_for(worker: int, gpus_per_trial: float, gpus: list[str]) -> list[str]:
    """Worker k's GPUs: one trial per GPU with gpus_per_trial 1, whole blocks for 2+, shared GPUs for 0.5."""
    if not gpus or gpus_per_trial <= 0:
        return []
    first = int(worker * gpus_per_trial)
    return [gpus[(first + k) % len(gpus)] for k in range(max(1, math.ceil(gpus_per_trial)))]


class TrialServer:
    """`Study.optimize(execute=...)` that runs each trial in a child forked for it, by a server process.

    The worker itself must not fork once a trial has started: Optuna's heartbeat thread runs then, and a child
    forked while that thread holds a lock (SQLAlchemy's, logging's) hangs on it forever. So the worker forks this
    server once, with everything loaded and before any thread runs; the server stays single-threaded and forks
    one child per trial on request. A killed worker takes the server, and the server its trial child, with it.
    """

    def __init__(self, cfg: ExperimentConfig, objective: Objective, gpus: list[str], threads: int):
        self.gpus = gpus
        self.died: str | None = None  # why this worker can run no more trials
        fork = multiprocessing.get_context("fork")
        self._conn, theirs = fork.Pipe()
        self._server = fork.Process(target=_serve, args=(theirs, cfg, objective, gpus, threads, os.getpid()),
                                    name="lmtune-trial-server")
        self._server.start()
        theirs.close()

    def __call__(self, _objective: Objective, ctx: TrialContext) -> float:
        ctx.set(records.WORKER, worker_name())
        if self.gpus:
            ctx.set(records.CUDA_VISIBLE_DEVICES, ",".join(self.gpus))
        try:
            self._conn.send((TrialSpec.of(ctx), ctx.trial.study.pruner))
            outcome, exitcode = self._conn.recv()
        except KeyboardInterrupt:  # the server ignores SIGINT: stop it here, and its trial child dies with it
            self._server.kill()
            raise
        except (EOFError, OSError):
            # Every later trial would fail at once and use up the budget: stop this worker, with a reason.
            self._server.join(timeout=5)
            self.died = (f"the trial server of worker {worker_name()} died (exit code {self._server.exitcode}); "
                         "this worker can run no more trials and stopped")
            ctx.set(records.FAIL_REASON, self.died)
            ctx.trial.study.stop()
            raise TrialError(self.died) from None
        if outcome is None:
            reason = (f"the trial's process died with exit code {exitcode} (-9 is SIGKILL, often the "
                      "out-of-memory killer)")
            ctx.set(records.FAIL_REASON, reason)
            raise TrialError(reason)
        return settle(outcome)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._server.join()
        self._conn.close()


def _serve(conn: Any, cfg: ExperimentConfig, objective: Objective, gpus: list[str], threads: int,
           worker: int) -> None:
    """The trial server's loop: fork a child per (trial, pruner) received, answer (outcome, exit code).
    Ctrl-C is the worker's to handle (it fails and re-queues the trial, then stops this server)."""
    _die_with_parent(worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the trial children
    fork = multiprocessing.get_context("fork")
    while (request := conn.recv()) is not None:
        spec, pruner = request
        reader, writer = fork.Pipe(duplex=False)
        child = fork.Process(target=_run_trial, args=(objective, cfg, spec, pruner, gpus, threads, writer,
                                                      os.getpid()), daemon=True)
        child.start()
        writer.close()
        try:
            outcome = reader.recv()
        except EOFError:  # the child died without answering
            outcome = None
        reader.close()
        child.join()
        conn.send((outcome, child.exitcode))


def _run_trial(objective: Objective, cfg: ExperimentConfig, spec: TrialSpec, pruner: optuna.pruners.BasePruner,
               gpus: list[str], threads: int, conn: Any, server: int) -> None:
    _die_with_parent(server)
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    import torch

    torch.set_num_threads(threads)
    conn.send(run_attached(objective, cfg, spec, pruner))


def _die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """A trial whose worker was killed must stop too, or it would go on writing to a trial marked failed.
    `sig` is what this process gets when `parent` dies (a worker takes SIGINT: it stops as on Ctrl-C)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os._exit(1)


def warm_up(cfg: ExperimentConfig) -> None:
    """Import what a trial would otherwise import lazily, each time, in its child: the model class and peft."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from lmtune.train.model import resolve_path

    config = AutoConfig.from_pretrained(resolve_path(cfg.model), trust_remote_code=cfg.model.trust_remote_code)
    with contextlib.suppress(KeyError):
        _ = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    if cfg.train.use_lora or "use_lora" in cfg.search.space:
        import peft  # noqa: F401


def work(cfg: ExperimentConfig, worker: int = 0, workers: int = 1, ready: Callable[[], None] | None = None,
         callbacks: Iterable[Callback] = ()) -> Study:
    """One worker of a shared study: prepare once, then run trials until the study's budget is spent.

    `worker` (0..workers-1) picks the GPUs and offsets the sampler seed; `ready()` returns when every local
    worker is ready, so that they start claiming trials together.
    """
    import torch

    torch.set_num_threads(1)  # one thread runs no OpenMP parallel region, which would hang every forked child
    quiet_libraries()
    objective = FineTuneObjective(cfg)
    objective.prepare()
    warm_up(cfg)
    ex = cfg.executor
    threads = ex.threads_per_trial or max(1, (os.cpu_count() or 1) // workers)
    server = TrialServer(cfg, objective, gpus_for(worker, ex.gpus_per_trial, visible_gpus()), threads)
    try:
        study = open_tuning_study(cfg, worker)
        if ready is not None:
            ready()
        optimize_config(cfg, study, objective, callbacks, server)
    finally:
        server.close()
    if server.died:
        raise LmtuneError(server.died)
    return study


def _worker_main(cfg_json: str, worker: int, workers: int, conn: Any, run: int) -> None:
    # A process group of its own: a terminal's Ctrl-C reaches `lmtune run` alone, which passes it on once; a
    # second SIGINT arriving mid-handling could cut the re-queueing of the interrupted trial short. If `lmtune
    # run` dies (SIGKILL, SIGTERM, a closed terminal), the worker gets that Ctrl-C from the kernel instead of
    # running the rest of the budget on its own; Python's own handler is set explicitly, since a program that
    # ignores SIGINT (a script started in the background) passes that on to the processes it spawns.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgrp()
    _die_with_parent(run, signal.SIGINT)

    def ready() -> None:  # a pipe, not a multiprocessing Barrier: no named semaphore outlives a killed run
        conn.send("ready")
        with contextlib.suppress(EOFError):  # `lmtune run` is gone: the kernel's SIGINT follows
            conn.recv()

    try:
        work(ExperimentConfig.model_validate_json(cfg_json), worker, workers, ready)
    except LmtuneError as e:
        print(f"worker {worker}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # its trial is failed and queued again; `lmtune run` says so
        sys.exit(130)
    finally:
        # Its trial is settled and only interpreter teardown is left, where a SIGINT (one more Ctrl-C, or the
        # kernel's when `lmtune run` dies just then) would print a traceback from an atexit callback (seen in CI).
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_workers(cfg: ExperimentConfig, study: Study, callbacks: Iterable[Callback] = ()) -> None:
    """`lmtune run --workers N`: N worker processes on this machine share the study; this process reports each
    trial as it finishes."""
    n = cfg.executor.workers or 1
    spawn = multiprocessing.get_context("spawn")  # a clean interpreter: nothing forked from this process
    pipes = [spawn.Pipe() for _ in range(n)]
    procs = [spawn.Process(target=_worker_main, args=(cfg.model_dump_json(), i, n, pipes[i][1], os.getpid()),
                           name=f"lmtune-worker-{i}") for i in range(n)]
    seen = {t.number for t in study.trials if t.state.is_finished()}
    for p in procs:
        p.start()
    starting, buried = set(range(n)), set[int]()
    try:
        while any(p.is_alive() for p in procs):
            if starting:
                _start_when_all_ready(procs, [ours for ours, _ in pipes], starting)
            for i, p in enumerate(procs):
                if p.exitcode and i not in buried:  # died or failed: its trial must not wait for the grace period
                    buried.add(i)
                    _fail_trials_of(study, p, i)
            time.sleep(0.5)
            _report_finished(study, seen, callbacks)
    except KeyboardInterrupt:  # the workers have process groups of their own: pass Ctrl-C on, once
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        raise
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    _report_finished(study, seen, callbacks)
    failed = [p.exitcode for p in procs if p.exitcode]
    if len(failed) == n:
        raise LmtuneError(f"all {n} workers exited with an error (exit codes {failed}); see their messages above")


def _start_when_all_ready(procs: list[Any], conns: list[Any], starting: set[int]) -> None:
    """Once every worker is ready (or has exited: one that failed to start must not keep the others waiting),
    tell them to go."""
    for i in list(starting):
        if conns[i].poll():
            with contextlib.suppress(EOFError):
                conns[i].recv()
            starting.discard(i)
        elif procs[i].exitcode is not None:
            starting.discard(i)
    if not starting:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.send("go")


def _fail_trials_of(study: Study, proc: Any, index: int) -> None:
    """The trials a dead worker left RUNNING: failed with the reason and queued again now, instead of after the
    heartbeat's grace period."""
    name = f"{socket.gethostname()}:{proc.pid}"
    reason = (f"worker died: local worker {index} (pid {proc.pid}) exited with code {proc.exitcode} "
              f"({_exit_meaning(proc.exitcode)}) while training this trial; its parameters are queued to run again")
    for t in study.optuna.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get(records.WORKER) == name:
            study.requeue(t, reason)
            study.optuna._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def _exit_meaning(code: int) -> str:
    if code >= 0:
        return "an error, see its message above"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _report_finished(study: Study, seen: set[int], callbacks: Iterable[Callback]) -> None:
    for t in study.trials:
        if t.state.is_finished() and t.number not in seen:
            seen.add(t.number)
            for callback in callbacks:
                callback(study.optuna, t)
