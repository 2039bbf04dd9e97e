"""Many workers on one study: exact budgets, crash safety (SIGKILL mid-trial), PostgreSQL, Ray."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import PG_PASSWORD, small_config
from optuna.trial import TrialState

from lmtune.executors.local import gpus_for
from lmtune.results import load_study
from lmtune.storage import open_storage

SRC = str(Path(__file__).resolve().parents[1] / "src")
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def lmtune(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "lmtune", *args], capture_output=True, text=True, env=env,
                         timeout=600, **kw)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(small_config(tmp_path, **overrides)))
    return path


def assert_complete(storage: str, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly n_trials count as finished, nothing is left running or waiting, numbers are unique."""
    trials = load_study(storage, "test").get_trials(deepcopy=False)
    retried = {n for t in trials for n in [*optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t),
                                           *t.system_attrs.get("requeued_from", [])]}
    counted = [t for t in trials if t.state.is_finished() and t.number not in retried]
    assert len(counted) == n_trials, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)
    return trials


def test_gpus_are_spread_one_trial_per_gpu_by_default() -> None:
    gpus = ["0", "1", "2", "3"]
    assert [gpus_for(w, 1, gpus) for w in range(5)] == [["0"], ["1"], ["2"], ["3"], ["0"]]
    assert [gpus_for(w, 2, gpus) for w in range(2)] == [["0", "1"], ["2", "3"]]
    assert [gpus_for(w, 0.5, gpus) for w in range(4)] == [["0"], ["0"], ["1"], ["1"]]
    assert gpus_for(0, 1, []) == [] and gpus_for(0, 0, gpus) == []


def test_four_workers_share_a_postgres_study(tmp_path: Path, postgres: str) -> None:
    cfg = write_config(tmp_path, storage=postgres, study_name="test",
                       search={"strategy": "random", "n_trials": 8, "seed": 0,
                               "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
                       executor={"heartbeat_interval": 1, "grace_period": 5})
    out = lmtune("run", str(cfg), "--workers", "4", "--quiet", "-o", str(tmp_path / "best.yaml"))
    assert PG_PASSWORD not in out.stdout + out.stderr
    trials = assert_complete(postgres, 8)
    assert len(trials) == 8
    workers = {t.user_attrs["worker"] for t in trials}
    assert 2 <= len(workers) <= 4, workers  # trials ran in several worker processes, not in `lmtune run` itself
    assert str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in workers}
    assert len({t.params["learning_rate"] for t in trials if not t.user_attrs.get("baseline")}) == 7
    # a second run finds the budget spent and adds nothing
    lmtune("run", str(cfg), "--workers", "2", "--quiet", "-o", str(tmp_path / "best.yaml"))
    assert len(load_study(postgres, "test").trials) == 8


def test_bad_postgres_password_is_one_masked_paragraph(tmp_path: Path, postgres: str) -> None:
    wrong = postgres.replace(PG_PASSWORD, "not-the-password")
    before = len(optuna.get_all_study_summaries(open_storage(postgres)))
    out = lmtune("run", str(write_config(tmp_path, storage=wrong)), "--quiet", check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "not-the-password" not in out.stderr
    assert "password authentication failed" in out.stderr and "***" in out.stderr
    assert len(optuna.get_all_study_summaries(open_storage(postgres))) == before


def _descendants(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(c) for c in path.read_text().split()] if path.exists() else []
    return children + [d for c in children for d in _descendants(c)]


LONG = 2000  # steps: a trial no machine trains between two looks of `_worker_mid_trial` (40 steps took 0.5 s in CI)


def _crash_config(tmp_path: Path, max_steps: int = 40, n_trials: int = 3, **executor: Any) -> Path:
    """Trials of `max_steps`: long ones (LONG) while a test must catch a trial mid-training, short ones (40) for the
    rerun that finishes the study (`lmtune run --allow-changed-config`, see `_rerun_short`)."""
    return write_config(tmp_path, train={"learning_rate": 3e-3, "per_device_train_batch_size": 16,
                                         "max_steps": max_steps,
                                         "eval_steps": 10, "eval_max_samples": 8},
                        search={"strategy": "random", "n_trials": n_trials, "seed": 0, "baseline": False,
                                "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
                        executor={"heartbeat_interval": 1, "grace_period": 4, **executor})


def _worker_mid_trial(cfg: Path, storage: str, *command: str, processes: int = 2, ignore_sigint: bool = False
                      ) -> tuple[subprocess.Popen, optuna.trial.FrozenTrial, list[int]]:
    """`lmtune worker` (or `command`) started on `cfg`, once a trial is training in the trial's own process (at
    least `processes` descendants): the process, that trial, and its descendants (for a worker: its trial server
    first, then the trial's)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = command or ("worker", str(cfg), "--index", "0")
    worker = subprocess.Popen([sys.executable, "-m", "lmtune", *args], env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,  # as from a terminal
                              preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint
                              else None)  # as from a script started in the background
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="test", storage=storage).trials
        except KeyError:  # the worker has not created the study yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker")]
        children = _descendants(worker.pid)
        if running and len(children) >= processes and running[0].intermediate_values:  # mid-training
            return worker, running[0], children
    worker.kill()
    raise AssertionError(f"the worker never reached the middle of a trial: {worker.communicate()[0][-2000:]}")


def _rerun_short(tmp_path: Path, cfg: Path, *args: str, **executor: Any) -> None:
    """Finish the study with 40-step trials: the interrupted phase trained LONG ones."""
    assert _crash_config(tmp_path, **executor) == cfg
    lmtune("run", str(cfg), "--quiet", "-o", str(tmp_path / "best.yaml"), "--allow-changed-config", *args)


def test_sigkilled_worker_trial_is_failed_then_retried(tmp_path: Path) -> None:
    """A worker killed mid-trial: its trial child dies with it, the next run marks the trial failed once its
    heartbeat is stale, retries its parameters, and completes the study with the budget counted right."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = _crash_config(tmp_path, max_steps=LONG)
    worker, victim, children = _worker_mid_trial(cfg, storage)
    try:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        _assert_gone(children)  # the server and the trial's child die with their worker (PR_SET_PDEATHSIG)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert optuna.load_study(study_name="test", storage=storage).trials[victim.number].state == TrialState.RUNNING
    _rerun_short(tmp_path, cfg)  # resume: waits out the grace period
    trials = assert_complete(storage, 3)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["fail_reason"].startswith("worker died: no heartbeat for over 4 s")
    retries = [t for t in trials
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert len(trials) == 4  # three counted trials plus the killed one


def test_run_fails_and_reruns_the_trial_of_its_own_killed_worker_at_once(tmp_path: Path) -> None:
    """`lmtune run --workers 2` sees one of its workers die (SIGKILL): that worker's trial is failed with the
    reason and queued again right away (not after the heartbeat's grace period, 60 s here), the other worker runs
    it, and the study ends with the budget counted once."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = _crash_config(tmp_path, max_steps=400, grace_period=60)  # caught mid-trial, and the same run ends
    run, victim, _ = _worker_mid_trial(cfg, storage, "run", str(cfg), "--workers", "2", "--quiet", "-o",
                                       str(tmp_path / "best.yaml"), processes=5)
    try:
        os.kill(int(victim.user_attrs["worker"].rpartition(":")[2]), signal.SIGKILL)
        output = run.communicate(timeout=300)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output
    trials = assert_complete(storage, 3)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["fail_reason"].startswith("worker died: local worker"), killed.user_attrs
    assert "killed by SIGKILL" in killed.user_attrs["fail_reason"]
    rerun = [t for t in trials if victim.number in t.system_attrs.get("requeued_from", [])]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE and rerun[0].params == killed.params


def test_sigterm_to_a_single_process_run_fails_and_requeues_its_trial(tmp_path: Path) -> None:
    """SIGTERM (a `kill`, a scheduler's stop) ends `lmtune run` like Ctrl-C: no trial left RUNNING."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = _crash_config(tmp_path, max_steps=LONG)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.Popen([sys.executable, "-m", "lmtune", "run", str(cfg), "--quiet", "-o", str(tmp_path / "b")],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    running: list[optuna.trial.FrozenTrial] = []
    try:
        for _ in range(600):  # until a trial is mid-training
            time.sleep(0.5)
            if run.poll() is not None:
                break
            with contextlib.suppress(KeyError):
                running = [t for t in optuna.load_study(study_name="test", storage=storage).trials
                           if t.state == TrialState.RUNNING and t.intermediate_values]
                if running:
                    break
        assert running, f"no trial reached the middle of its training: {run.communicate(timeout=60)[0][-3000:]}"
        victim = running[0]
    except BaseException:
        run.kill()
        raise
    output = _signal_and_wait(run, signal.SIGTERM)
    assert run.returncode == 130 and "interrupted:" in output and "Traceback" not in output, output
    trials = optuna.load_study(study_name="test", storage=storage).trials
    assert trials[victim.number].state == TrialState.FAIL
    assert trials[victim.number].user_attrs["fail_reason"].startswith("interrupted")
    assert [t.params for t in trials if t.state == TrialState.WAITING] == [victim.params]


def _signal_and_wait(run: subprocess.Popen, sig: int) -> str:
    """Send `sig` to a running `lmtune` and return its output once it exits (killed if it does not)."""
    try:
        run.send_signal(sig)
        return run.communicate(timeout=120)[0]
    finally:
        if run.poll() is None:
            run.kill()


def _assert_gone(pids: list[int]) -> None:
    def alive(pid: int) -> bool:
        status = Path(f"/proc/{pid}/status")
        try:
            return "zombie" not in status.read_text()
        except FileNotFoundError:
            return False

    for _ in range(300):
        if not any(alive(p) for p in pids):
            return
        time.sleep(0.1)
    raise AssertionError(f"still running: {[p for p in pids if alive(p)]}")


@pytest.mark.parametrize(("command", "how"), [
    (("run", "--workers", "2", "-o", "BEST"), "ctrl-c"), (("run", "--workers", "2", "-o", "BEST"), "kill-int"),
    (("run", "--workers", "2", "-o", "BEST"), "kill-9"), (("run", "--workers", "2", "-o", "BEST"), "kill-9-ign"),
    (("worker", "--index", "0"), "ctrl-c")],
    ids=["run-ctrl-c", "run-kill-int", "run-kill-9", "run-kill-9-sigint-ignored", "worker-ctrl-c"])
def test_ctrl_c_stops_the_workers_and_the_next_run_reruns_the_interrupted_trials(
        tmp_path: Path, command: tuple[str, ...], how: str) -> None:
    """SIGINT to the terminal's process group (Ctrl-C) or to `lmtune run --workers 2` alone (kill -INT), or
    `lmtune run` killed outright (its workers get SIGINT from the kernel, also when it was started with SIGINT
    ignored, as a background job is): the workers and their trials stop, each interrupted trial is failed and
    queued again, and the next run completes the budget counting it once."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = _crash_config(tmp_path, max_steps=LONG)
    best = str(tmp_path / "best.yaml")
    args = [best if a == "BEST" else a for a in command[1:]]
    run, victim, descendants = _worker_mid_trial(cfg, storage, command[0], str(cfg), *args,
                                                 ignore_sigint=how == "kill-9-ign")
    try:
        if how == "ctrl-c":
            os.killpg(run.pid, signal.SIGINT)
        else:
            run.send_signal(signal.SIGKILL if how.startswith("kill-9") else signal.SIGINT)
        output = run.communicate(timeout=120)[0]  # for kill-9: until the workers, which share its stdout, end
    finally:
        if run.poll() is None:
            run.kill()
    if how.startswith("kill-9"):  # the orphaned workers end quietly: no traceback, no leaked semaphore
        assert run.returncode == -signal.SIGKILL, output
        assert "Traceback" not in output and "leaked" not in output, output
    else:
        assert run.returncode == 130 and "interrupted:" in output and "Traceback" not in output, output
    _assert_gone(descendants)
    trials = optuna.load_study(study_name="test", storage=storage).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    cut = [t for t in trials if t.state == TrialState.FAIL]
    assert victim.number in {t.number for t in cut}
    assert all(t.user_attrs["fail_reason"].startswith("interrupted") for t in cut)
    queued = [t for t in trials if t.state == TrialState.WAITING]  # each cut configuration queued once
    assert sorted(t.params["learning_rate"] for t in queued) == sorted({t.params["learning_rate"] for t in cut}), output
    _rerun_short(tmp_path, cfg)
    assert len(assert_complete(storage, 3)) == 3 + len(cut)


def test_ctrl_c_during_a_storage_call_comes_after_it_and_leaves_the_database_unlocked(tmp_path: Path) -> None:
    """A KeyboardInterrupt raised in the middle of a SQLite query can leave the database locked while it is
    handled: re-queueing the interrupted trial, and every other worker, then waited out the 60 s lock timeout
    (a Ctrl-C test hung so in CI). Ctrl-C during a storage call is raised when the call has returned."""
    db = tmp_path / "study.db"
    study = optuna.create_study(storage=open_storage(f"sqlite:///{db}"), study_name="s")
    x = optuna.distributions.FloatDistribution(0, 1)
    study.add_trials([optuna.trial.create_trial(params={"x": i / 300}, distributions={"x": x}, value=0.5,
                                                user_attrs={"curve": list(range(50))}) for i in range(300)])
    rng = random.Random(0)
    for _ in range(30):  # before the fix, about one interrupt in five left the database locked
        threading.Timer(rng.uniform(0.001, 0.05), os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            while True:
                study.get_trials(deepcopy=False)
        other = sqlite3.connect(db, timeout=0.5, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # fails with "database is locked" if the interrupted read held on
            other.execute("COMMIT")
        finally:
            other.close()


def test_worker_whose_trial_server_dies_stops_with_a_reason(tmp_path: Path) -> None:
    """Without its trial server a worker cannot run trials: it fails the trial in hand with the reason and
    exits with an error, instead of failing every remaining trial of the budget at once."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    worker, victim, (server, *_) = _worker_mid_trial(_crash_config(tmp_path, max_steps=LONG), storage)
    os.kill(server, signal.SIGKILL)
    output = worker.communicate(timeout=120)[0]
    assert worker.returncode == 2 and "trial server" in output and "Traceback" not in output, output
    trials = optuna.load_study(study_name="test", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL]  # the budget's other two trials are untouched
    assert "trial server of worker" in trials[0].user_attrs["fail_reason"]


@pytest.fixture
def ray_head() -> Any:
    """A local Ray head for one test, stopped after it (never the machine's shared default port)."""
    if os.environ.get("CI"):
        import ray  # CI installs the dev extra: a missing Ray must fail there, not skip
    else:
        ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_ray_executor_runs_trials_as_ray_tasks(tmp_path: Path, ray_head: str) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = write_config(tmp_path, search={"strategy": "random", "n_trials": 4, "seed": 0,
                                         "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
                       executor={"type": "ray", "threads_per_trial": 1})
    lmtune("run", str(cfg), "--address", ray_head, "--quiet", "-o", str(tmp_path / "best.yaml"))
    trials = assert_complete(storage, 4)
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.state, t.user_attrs) for t in trials]
    assert all(t.user_attrs["worker"].startswith("ray:") for t in trials)


def test_ctrl_c_cancels_the_ray_tasks_and_the_next_run_reruns_their_trials(tmp_path: Path, ray_head: str) -> None:
    """Optuna waits for the threads that wait on Ray tasks: Ctrl-C must cancel the tasks first, or it would take
    effect only once the running trials had trained to the end. Three threads share a budget of two trials, so one
    waits for room: it must not start the re-queued trials (it would fail and queue them a second time)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    ray_run = {"type": "ray", "threads_per_trial": 1, "workers": 3, "n_trials": 2}
    cfg = _crash_config(tmp_path, max_steps=LONG, **ray_run)  # trials long enough to be cut, wherever they are
    best = str(tmp_path / "best.yaml")
    run, victim, _ = _worker_mid_trial(cfg, storage, "run", str(cfg), "--address", ray_head, "-o", best,
                                       processes=0)  # the trials train in the Ray head's worker processes
    output = _signal_and_wait(run, signal.SIGINT)
    assert run.returncode == 130 and "interrupted:" in output and "Traceback" not in output, output
    trials = optuna.load_study(study_name="test", storage=storage).trials
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials], output
    cut = [t for t in trials if t.state == TrialState.FAIL]
    assert victim.number in {t.number for t in cut} and not [t for t in trials if t.state == TrialState.RUNNING], states
    assert all(t.user_attrs["fail_reason"].startswith("interrupted") for t in cut), states
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.params["learning_rate"] for t in queued) == sorted(t.params["learning_rate"] for t in cut), states
    assert not [t for t in cut if t.system_attrs.get("requeued_from")], states  # no re-queued trial was started
    _rerun_short(tmp_path, cfg, "--address", ray_head, **ray_run)
    assert len(assert_complete(storage, 2)) == 2 + len(cut)
