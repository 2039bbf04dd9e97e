"""The `lmtune` command line: run, worker, train, select, status, best, export, report, dashboard."""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lmtune.config import ExecutorConfig, ExperimentConfig, TrainConfig, load_config, validate_section
from lmtune.display import LiveDisplay, front_table, log_trial, trials_table
from lmtune.errors import ConfigError, LmtuneError
from lmtune.objectives import parse_pick
from lmtune.records import StudyRecord, TrialRecord
from lmtune.results import (
    best_config,
    best_trial,
    compare,
    fmt,
    load_study,
    pick_trial,
    record_pick,
    selection_cost,
    study_cost,
    transfer_fit_lines,
    write_comparison,
)
from lmtune.storage import mask_url

# An unexpected error's traceback never prints local variables: one of them may hold a storage password.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Tune the hyperparameters of LLM instruction fine-tuning with real trials.")
# Off a terminal (a pipe, a log file, CI) rich assumes 80 columns and folds the trial table cell by cell.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)
err_console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="experiment YAML file")]
StorageOpt = Annotated[str | None, typer.Option(help="Optuna storage URL (default: the config's, or "
                                                     "sqlite:///lmtune.db)")]
StudyOpt = Annotated[str | None, typer.Option("--study", help="study name (default: the config's, or the only "
                                                              "study in the storage)")]


def _fail(e: Exception) -> None:
    # Text, not markup: a message may hold "[...]" (a list of choices) that rich would take for a style.
    err_console.print(Text.assemble(("error: ", "bold red"), mask_url(str(e))), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _load(config: Path, storage: str | None = None, study: str | None = None) -> ExperimentConfig:
    cfg = load_config(config)
    if storage:
        _override(cfg, "storage", storage, "--storage")
    if study:
        _override(cfg, "study_name", study, "--study")
    return cfg


def _override(section: BaseModel, field: str, value: Any, option: str) -> None:
    """Set a config field from a command-line option, validated like the YAML value it replaces."""
    try:
        setattr(section, field, value)
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{option} {value!r}: {msg}") from None


def print_best(study: optuna.Study, output: Path | None) -> bool:
    """Print the best trial against the baseline (and write the best config); False if no trial completed."""
    best = best_trial(study)
    if best is None:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        console.print("[yellow]no completed trial yet[/]" if not done else
                      f"[yellow]no feasible completed trial: all {len(done)} break objective.constraints[/]")
        return False
    cost = study_cost(study.get_trials(deepcopy=False))
    what = "best trial" if not StudyRecord(study).multi_objective else "Pareto point best on the first objective:"
    console.print(f"[bold]{what} {best.number}[/]: " + ", ".join(
        f"{n} = {fmt(v)}" for (n, _), v in zip(StudyRecord(study).objectives, best.values, strict=True)))
    if StudyRecord(study).multi_objective and not StudyRecord(study).picked:
        console.print("several objectives: `lmtune best --pareto` lists the front and `lmtune best --pick "
                      "\"METRIC >= X, minimize METRIC\"` chooses the point best.yaml holds (until then, the front's "
                      "best on the first objective)", highlight=False)
    if StudyRecord(study).selection:
        console.print(selection_table(StudyRecord(study).selection))
    comp = compare(study)
    if comp is not None:
        table = Table(title="baseline vs tuned")
        for col in ("", "baseline", "tuned"):
            table.add_column(col)
        for name, b, t in comp.rows:
            table.add_row(name, fmt(b), fmt(t))
        console.print(table)
        console.print(f"[bold]{comp.verdict}[/]")
        for flag in (StudyRecord(study).selection or {}).get("flags", []):
            console.print(f"[yellow]note:[/] {flag}", highlight=False)
        if output is not None:
            files = write_comparison(comp, output.with_name(output.stem + "_comparison"))
            console.print(f"comparison table written to {', '.join(map(str, files))}")
    console.print(f"study cost: {int(cost['trials'])} trials, {int(cost['steps'])} optimizer steps, "
                  f"{cost['fte']:.2f} FTE, {cost['wall_seconds']:.0f} s")
    extra = selection_cost(study)
    if extra:
        console.print(f"selection cost: {extra['runs']} re-training runs, {extra['fte']:.2f} FTE, "
                      f"{extra['wall_seconds']:.0f} s (on top of the study's)")
    for rung in StudyRecord(study).proxy_rungs:
        if rung["fte_target"] is not None:
            console.print(f"proxy stage ({rung['study']}): {rung['trials']} trials, {rung['fte_target']:.2f} FTE in "
                          "target runs by training FLOPs (on top of the study's)")
    for line in transfer_fit_lines(study):
        console.print(f"transfer fit: {line}", highlight=False)
    if output is not None and StudyRecord(study).config:
        output.write_text(yaml.safe_dump(best_config(study), sort_keys=False))
        console.print(f"best config written to {output}")
    return True


def _check_some_trial_finished(study: optuna.Study, started: datetime) -> None:
    """Exit 1 when this invocation ran trials and every one failed: a run that produced nothing must not look
    like success to a script or a scheduler."""
    ran = [t for t in study.get_trials(deepcopy=False)
           if t.datetime_start and t.datetime_start >= started and t.state.is_finished()]
    if ran and all(t.state == optuna.trial.TrialState.FAIL for t in ran):
        reasons = Counter(TrialRecord(t).fail_reason or "no reason recorded" for t in ran)
        reason, n = reasons.most_common(1)[0]
        err_console.print(Text.assemble(("error: ", "bold red"), mask_url(
            f"no trial of this run finished: {len(ran)} failed ({n} with: {reason[:300]}); see `lmtune status`")),
            highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def run(config: ConfigArg, n_trials: Annotated[int | None, typer.Option(help="override search.n_trials")] = None,
        timeout: Annotated[float | None, typer.Option(help="override search.timeout (seconds)")] = None,
        storage: StorageOpt = None, study: StudyOpt = None,
        output: Annotated[Path, typer.Option("-o", "--output", help="where to write the best config")] = Path(
            "best.yaml"),
        quiet: Annotated[bool, typer.Option(help="print only the final summary: no live display, no "
                                                 "per-trial lines")] = False,
        workers: Annotated[int | None, typer.Option(help="trials in parallel, each in its own process "
                                                         "(override executor.workers)")] = None,
        executor: Annotated[str | None, typer.Option(help="local or ray (override executor.type)")] = None,
        address: Annotated[str | None, typer.Option(help="Ray cluster address, e.g. auto")] = None,
        allow_changed_config: Annotated[bool, typer.Option(
            "--allow-changed-config", help="resume a study although its model, data, objective or fixed training "
                                           "arguments changed (old and new trials are then ranked together)")] = False
        ) -> None:
    """Run (or resume) the tuning study a config describes, then show the best config against the baseline."""
    from lmtune.pipeline import tune  # torch and transformers: only the commands that train import them

    try:
        cfg = _load(config, storage, study)
        if n_trials is not None:
            _override(cfg.search, "n_trials", n_trials, "--n-trials")
        if timeout is not None:
            _override(cfg.search, "timeout", timeout, "--timeout")
        _set_executor(cfg, workers, executor, address)
        if allow_changed_config:
            cfg.search.allow_changed_config = True
        started = datetime.now()  # Optuna stamps trials with naive local times
        if quiet:
            result = tune(cfg)
        elif console.is_terminal:
            with LiveDisplay(cfg, console) as display:
                result = tune(cfg, callbacks=[display.on_trial_end], trial_progress=display.on_step)
        else:
            result = tune(cfg, callbacks=[log_trial(console)])
        console.print(trials_table(result.optuna, title=f"study {result.name}"))
        if not any(t.datetime_start and t.datetime_start >= started for t in result.trials):
            console.print(f"[yellow]nothing to run:[/] study {result.name!r} has spent its budget "
                          f"({result.n_finished} finished trials, n_trials = {cfg.search.n_trials}); raise "
                          "--n-trials to run more, use another study_name for a new study, or `lmtune train "
                          "best.yaml` to train the best config once", highlight=False)
        print_best(result.optuna, output)
        _check_some_trial_finished(result.optuna, started)
    except LmtuneError as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()


def _interrupted() -> None:
    err_console.print("[bold red]interrupted:[/] trials that were running are marked failed and queued to run "
                      "again, not counted; `lmtune run` (or `lmtune worker`) on this config resumes the study",
                      highlight=False)
    raise typer.Exit(130) from None


def _set_executor(cfg: ExperimentConfig, workers: int | None, executor: str | None, address: str | None) -> None:
    overrides = {k: v for k, v in {"workers": workers, "type": executor, "address": address}.items()
                 if v is not None}
    if not overrides:
        return
    _assign(cfg, "executor", validate_section(ExecutorConfig, {**cfg.executor.model_dump(), **overrides},
                                              "executor", "(--workers/--executor/--address)"))


def _assign(cfg: ExperimentConfig, name: str, section: Any) -> None:
    """Set a section given on the command line, with the checks across sections (e.g. pbt runs its own
    workers) as one-paragraph errors."""
    try:
        setattr(cfg, name, section)
    except ValidationError as e:
        raise ConfigError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


@app.command()
def worker(config: ConfigArg, storage: StorageOpt = None, study: StudyOpt = None,
           index: Annotated[int | None, typer.Option(help="this worker's number: offsets the sampler seed and "
                                                          "picks its GPUs (default: from the process id)")] = None
           ) -> None:
    """Join a shared study (e.g. on PostgreSQL) from this machine and run trials until its budget is spent.

    Start one per machine (or per GPU, with --index); each trial runs in its own child process."""
    from lmtune.executors.local import work

    try:
        cfg = _load(config, storage, study)
        started = datetime.now()
        joined = work(cfg, worker=os.getpid() if index is None else index, callbacks=[log_trial(console)])
        _check_some_trial_finished(joined.optuna, started)
    except LmtuneError as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted()


@app.command()
def train(config: ConfigArg,
          set_: Annotated[list[str] | None, typer.Option("--set", help="override a training argument, "
                                                                       "e.g. --set learning_rate=3e-3")] = None,
          output_dir: Annotated[Path | None, typer.Option(help="save the trained model here")] = None) -> None:
    """Train once with the config's baseline (`train:`) values, or with --set overrides; no study."""
    from lmtune.quiet import quiet_libraries
    from lmtune.train.trainer import Trainer

    try:
        cfg = load_config(config)
        overrides = {}
        for item in set_ or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise LmtuneError(f"--set {item!r}: write KEY=VALUE, e.g. --set learning_rate=3e-3")
            overrides[key.strip()] = yaml.safe_load(value)
        if output_dir is not None:
            overrides["output_dir"] = str(output_dir)
        train_cfg = validate_section(TrainConfig, {**cfg.train.model_dump(), **overrides}, "train", "(--set)")
        quiet_libraries()
        with _step_bar("training") as on_step:
            trainer = Trainer.from_config(cfg, train_cfg, progress=on_step).setup()
            result = trainer.train()
        table = Table(title="evaluation")
        table.add_column("metric")
        table.add_column("value")
        for k, v in result.metrics.items():
            table.add_row(k, fmt(v))
        console.print(table)
        console.print(f"{result.steps} steps, {result.tokens} tokens, {result.wall_seconds:.1f} s")
        if train_cfg.output_dir:
            console.print(f"model saved to {trainer.save(train_cfg.output_dir, result)}")
    except LmtuneError as e:
        _fail(e)


@contextlib.contextmanager
def _step_bar(label: str) -> Iterator[Callable[[int, int, float], None]]:
    """A progress bar over the optimizer steps of each training run (restarting per run); off when not a TTY."""
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=None, info="")

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.3f}")

        yield on_step


def _open(config: Path | None, storage: str | None, study: str | None) -> optuna.Study:
    if config is not None:
        cfg = _load(config, storage, study)
        return load_study(cfg.storage, cfg.study_name)
    return load_study(storage or "sqlite:///lmtune.db", study)


OptConfigArg = Annotated[Path | None, typer.Argument(help="experiment YAML file (optional)")]


@app.command()
def status(config: OptConfigArg = None, storage: StorageOpt = None, study: StudyOpt = None) -> None:
    """Show a study's trials and its total cost."""
    try:
        st = _open(config, storage, study)
        console.print(trials_table(st, title=f"study {st.study_name}"))
        running = [t.number for t in st.get_trials(deepcopy=False) if not t.state.is_finished()]
        cost = study_cost(st.get_trials(deepcopy=False))
        console.print(f"{int(cost['trials'])} finished, {len(running)} running or waiting; "
                      f"{cost['fte']:.2f} FTE, {cost['wall_seconds']:.0f} s")
    except LmtuneError as e:
        _fail(e)


@app.command()
def best(config: OptConfigArg = None, storage: StorageOpt = None, study: StudyOpt = None,
         output: Annotated[Path, typer.Option("-o", "--output", help="where to write the best config")] = Path(
             "best.yaml"),
         pareto: Annotated[bool, typer.Option("--pareto", help="list the Pareto front (feasible trials no other "
                                                                "beats on every objective)")] = False,
         pick: Annotated[str | None, typer.Option(help="choose one point and remember it, e.g. \"exact_match >= "
                                                       "0.9, minimize flops\"; best.yaml, the comparison and "
                                                       "`lmtune export` then use it")] = None) -> None:
    """Best params and metrics, the baseline-vs-tuned comparison; writes the best config as YAML."""
    try:
        st = _open(config, storage, study)
        if pareto:
            console.print(front_table(st))
        if pick is not None:
            try:
                rule = parse_pick(pick)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            chosen = pick_trial(st, rule)
            record_pick(st, chosen, rule)
            console.print(f"picked trial {chosen.number} by {rule.text!r}: " + ", ".join(
                f"{n} = {fmt(TrialRecord(chosen).measure(n))}" for n in dict.fromkeys(
                    [*(n for n, _ in StudyRecord(st).objectives), *(c.metric for c in rule.conditions),
                     *([rule.goal.name] if rule.goal else [])])), highlight=False)
        found = print_best(st, output)
    except LmtuneError as e:
        _fail(e)
    if not found:  # nothing to write: a script reading best.yaml next must not go on
        raise typer.Exit(1)


@app.command()
def select(config: ConfigArg, storage: StorageOpt = None, study: StudyOpt = None,
           top_k: Annotated[int | None, typer.Option(help="configs to re-check (default: select.top_k, or 3)")] = None,
           seeds: Annotated[str | None, typer.Option(help="comma-separated training seeds, e.g. 0,1,2")] = None,
           rule: Annotated[str | None, typer.Option(help="mean | pessimistic (mean one std towards worse)")] = None,
           output: Annotated[Path, typer.Option("-o", "--output", help="where to write the best config")] = Path(
               "best.yaml")) -> None:
    """Re-train the study's top-k configs (and the baseline) with several seeds, score them on the held-out test
    split, and pick the robust winner; the result is stored in the study."""
    from lmtune.config import SelectConfig
    from lmtune.quiet import quiet_libraries
    from lmtune.select import run_selection

    try:
        cfg = _load(config, storage, study)
        options = {"top_k": top_k, "rule": rule,
                   "seeds": [s.strip() for s in seeds.split(",")] if seeds is not None else None}
        base = cfg.select.model_dump() if cfg.select else {}
        _assign(cfg, "select", validate_section(
            SelectConfig, {**base, **{k: v for k, v in options.items() if v is not None}}, "select",
            "(--top-k/--seeds/--rule)"))
        st = load_study(cfg.storage, cfg.study_name)
        quiet_libraries()
        with _step_bar("selection") as on_step:
            run_selection(cfg, st, progress=on_step)
        print_best(st, output)  # the selection table first
    except LmtuneError as e:
        _fail(e)


def selection_table(selection: dict[str, Any]) -> Table:
    metric = selection["metric"]
    table = Table(title=f"selection: test {metric} over seeds (rule: {selection['rule']})")
    for col in ("trial", "search value", *(f"seed {s}" for s in selection["candidates"][0]["per_seed"]),
                "test mean ± std", "validation mean", "gap"):
        table.add_column(col)
    for r in selection["candidates"]:
        name = f"{r['trial']}" + (" (baseline)" if r["baseline"] else "") + (
            " *winner*" if r["trial"] == selection["winner"] else "")
        table.add_row(name, fmt(r["search_value"]), *(fmt(s["test"][metric]) for s in r["per_seed"].values()),
                      f"{r['test_mean']:.4g} ± {r['test_std']:.3g}", fmt(r["validation_mean"]), fmt(r["gap"], 3),
                      style="bold green" if r["trial"] == selection["winner"] else None)
    return table


@app.command("export")
def export_(config: OptConfigArg = None, storage: StorageOpt = None, study: StudyOpt = None,
            format_: Annotated[str, typer.Option("--format", help="yaml (lmtune config) | trainingargs (HF "
                                                                  "TrainingArguments JSON)")] = "yaml",
            output: Annotated[Path | None, typer.Option("-o", "--output", help="file to write (default: "
                                                        "best.yaml or training_args.json)")] = None) -> None:
    """Write the tuned hyperparameters (the selection winner when it ran) as lmtune YAML or HF TrainingArguments."""
    from lmtune.export import export

    try:
        if format_ not in ("yaml", "trainingargs"):
            raise LmtuneError(f"--format {format_!r}: choose yaml or trainingargs")
        out = output or Path("best.yaml" if format_ == "yaml" else "training_args.json")
        files = export(_open(config, storage, study), format_, out)
        console.print(f"written: {', '.join(map(str, files))}", highlight=False)
        if len(files) > 1:
            console.print(f"{files[1]} holds what TrainingArguments has no field for (LoRA config, model dropout, "
                          "early stopping callback, the Adafactor optimizer, lmtune-only knobs) and the tuned "
                          "model's directory", highlight=False)
    except LmtuneError as e:
        _fail(e)


@app.command()
def report(config: OptConfigArg = None, storage: StorageOpt = None, study: StudyOpt = None,
           output: Annotated[Path, typer.Option("-o", "--output", help="the HTML file to write")] = Path(
               "report.html"),
           png: Annotated[Path | None, typer.Option("--png", help="also write each plot as PNG in this folder "
                                                                  "(needs Chromium)")] = None) -> None:
    """Write a self-contained HTML report of a study: summary, baseline vs tuned, curves, importance, cost."""
    from lmtune.report import build_report

    try:
        path = build_report(_open(config, storage, study), output, png_dir=png)
        console.print(f"report written to {path}" + (f", plots as PNG in {png}" if png is not None else ""))
    except LmtuneError as e:
        _fail(e)


@app.command()
def dashboard(config: OptConfigArg = None, storage: StorageOpt = None, study: StudyOpt = None,
              port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8080) -> None:
    """Start optuna-dashboard on the study's storage, on 127.0.0.1 only; prints the URL, runs until Ctrl-C."""
    from lmtune.report.dashboard import serve

    try:
        url, name = storage or "sqlite:///lmtune.db", study
        if config is not None:
            cfg = _load(config, storage, study)
            url, name = cfg.storage, cfg.study_name
        serve(url, name, port=port,
              announce=lambda u: console.print(f"optuna-dashboard: {u}  (Ctrl-C to stop)", highlight=False))
    except LmtuneError as e:
        _fail(e)
