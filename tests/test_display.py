"""The live display of `lmtune run`, driven by a real small study and rendered to a recording console, and the
plain output of `lmtune run` when stdout is not a terminal."""

import re
import subprocess
import sys

import optuna
import yaml
from conftest import small_config
from rich.console import Console

from lmtune import tune
from lmtune.config import validate_config
from lmtune.display import LiveDisplay, ranked_trials


def screen(display: LiveDisplay) -> str:
    console = Console(record=True, force_terminal=True, width=200)
    console.print(display.renderable())
    return console.export_text()


def budget_line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(name))


def test_budget_bars_follow_the_budget_kind(tmp_path):
    def bars(**search):
        cfg = validate_config(small_config(tmp_path, search=search))
        display = LiveDisplay(cfg, Console(width=200))
        return {display.progress.tasks[i].description: display.progress.tasks[i].total
                for i in display.budget_tasks}

    assert bars(n_trials=7) == {"trials": 7}
    assert bars(n_trials=None, budget={"fte": 2.5}) == {"FTE": 2.5}
    assert bars(n_trials=None, budget={"device_hours": 0.5}, timeout=60) == {"device-hours": 0.5, "time": 60}
    assert bars(n_trials=20, budget={"fte": 3.0}) == {"trials": 20, "FTE": 3.0}  # either one ends the study
    assert bars(strategy="pbt", pbt={"population_size": 4}) == {"trials": 5}  # the population and the baseline


def test_live_display_shows_budget_current_trial_and_best_trials(tmp_path):
    cfg = validate_config(small_config(tmp_path, search={
        "strategy": "random", "n_trials": 4, "seed": 3, "budget": {"fte": 10.0},
        "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}}}))
    display = LiveDisplay(cfg, Console(width=200))
    seen: list[tuple[str, list[int]]] = []
    mid_trial: list[str] = []

    def on_step(step, total, loss):
        display.on_step(step, total, loss)
        if step == total // 2:
            mid_trial.append(screen(display))

    def on_trial_end(study, trial):
        display.on_trial_end(study, trial)
        text = screen(display)
        table = text[text.index("best "):]
        shown = [int(m) for m in re.findall(r"^│ (\d+) ", table, flags=re.M)]
        seen.append((text, shown))
        assert shown == [t.number for t in ranked_trials(study)][:len(shown)]  # best first, in order
        assert f"last: trial {trial.number}" in text

    study = tune(cfg, callbacks=[on_trial_end], trial_progress=on_step)
    assert len(seen) == 4 and len(mid_trial) == 4
    for n, text in enumerate(mid_trial):  # the current trial's bar: its number and its steps
        assert re.search(rf"trial {n}\b.*6/12 steps\s+loss \d", text), text
        assert f"{n}/4" in budget_line(text, "trials")
    # The table grows as trials finish and ends with every completed trial, best first.
    assert [len(shown) for _, shown in seen] == [1, 2, 3, 4]
    sign = 1 if study.optuna.direction.name == "MINIMIZE" else -1
    values = {t.number: sign * t.value for t in study.trials}
    assert seen[-1][1] == sorted(values, key=values.get)
    assert "4/4" in budget_line(seen[-1][0], "trials")
    fte = sum(t.user_attrs["cost"]["fte"] for t in study.trials)
    assert f"{fte:.3g}/10" in budget_line(seen[-1][0], "FTE")
    assert "4 complete" in seen[-1][0]


def test_run_without_a_terminal_prints_one_plain_line_per_trial(tmp_path):
    path = tmp_path / "exp.yaml"
    # The baseline's learning rate lies outside the searched range (as in the quickstart), yet its line shows it.
    path.write_text(yaml.safe_dump(small_config(tmp_path, train={"learning_rate": 5e-5})))
    out = subprocess.run([sys.executable, "-c", "from lmtune.cli import app; app()", "run", str(path),
                          "-o", str(tmp_path / "best.yaml")], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    trial_lines = [line for line in lines if re.match(r"trial \d+ (complete|pruned|failed)", line)]
    assert [line.split()[1] for line in trial_lines] == ["0", "1", "2"]
    assert all("eval_loss=" in line and "learning_rate=" in line for line in trial_lines)
    assert "\x1b[" not in out.stdout and "\r" not in out.stdout  # no colours, no redrawn lines
    assert not re.search(r"\d+/\d+ steps", out.stdout)  # no progress bars
    assert "study cost: 3 trials" in out.stdout and out.stderr.strip() == ""


def test_live_display_follows_pbt_members_segment_by_segment(tmp_path):
    cfg = validate_config(small_config(tmp_path, search={
        "strategy": "pbt", "seed": 0, "baseline": False,
        "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}},
        "pbt": {"population_size": 2, "segment_steps": 6, "checkpoint_dir": str(tmp_path / "pbt")}}))
    display = LiveDisplay(cfg, Console(width=200))
    labels: list[str] = []

    def on_step(step, total, loss):
        display.on_step(step, total, loss)
        if step % 6 == 3:  # mid-segment
            labels.append(display.progress.tasks[display.trial_task].description)

    study = tune(cfg, callbacks=[display.on_trial_end], trial_progress=on_step)
    member = {t.user_attrs["pbt_member"]: t.number for t in study.trials}
    assert labels == [f"trial {member[i % 2]} (member {i % 2})" for i in range(4)]  # 2 segments x 2 members
    assert "2/2" in budget_line(screen(display), "trials")


def test_trials_running_in_other_processes_are_shown_from_storage(tmp_path):
    """With --workers (or Ray) no step reaches this process: the trial bar lists the running trials and the
    last step each reported to the database, re-read at most once a second."""
    cfg = validate_config(small_config(tmp_path))
    storage = optuna.storages.RDBStorage(cfg.storage)
    study = optuna.create_study(study_name=cfg.study_name, storage=storage)
    now = [0.0]
    display = LiveDisplay(cfg, Console(width=200), clock=lambda: now[0])
    assert "waiting" in screen(display)
    first, second = study.ask(), study.ask()
    first.report(2.5, 6)
    now[0] = 0.5
    assert "trial 0 step 6" not in screen(display)  # polled less than a second ago
    now[0] = 1.5
    line = next(ln for ln in screen(display).splitlines() if "running" in ln)
    assert "2 trials" in line and "trial 0 step 6, trial 1 step 0" in line
    study.tell(first, 1.0)
    study.tell(second, 2.0)
    now[0] = 3.0
    assert "waiting" in screen(display)
    display.on_step(1, 12, 3.0)  # training in this process: steps drive the bar, storage is not read
    third = study.ask()
    third.report(1.0, 6)
    now[0] = 5.0
    assert "trial 2 step 6" not in screen(display)
    # After a trial ends the next one may train elsewhere (PBT members after the in-process baseline).
    display.on_trial_end(study, study.trials[1])
    now[0] = 7.0
    assert "trial 2 step 6" in screen(display)
