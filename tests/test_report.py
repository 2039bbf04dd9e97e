"""The HTML report and the dashboard, on real tiny studies: the page's content, how Chromium renders it, PNGs,
and optuna-dashboard answering on 127.0.0.1."""

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import plotly.offline
import pytest
from conftest import small_config
from optuna.trial import TrialState
from typer.testing import CliRunner

from lmtune import Study, tune
from lmtune.cli import app
from lmtune.report import build_report
from lmtune.report._figures import importances, pareto_front
from lmtune.results import best_config, compare

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("summary", "baseline-vs-tuned", "history", "curves", "parallel", "importance", "slices", "pareto")
PLOTS = ("history", "curves", "parallel", "importance", "slices", "pareto")


@pytest.fixture(scope="module")
def asha(tmp_path_factory):
    """An ASHA study whose later trials are pruned at the first rung, and its report."""
    tmp = tmp_path_factory.mktemp("asha")
    cfg = small_config(tmp, search={
        "strategy": "asha", "n_trials": 6, "seed": 1, "min_resource": 4, "reduction_factor": 2,
        "space": {"learning_rate": {"low": 1e-5, "high": 3e-2, "log": True},
                  "weight_decay": {"low": 0.0, "high": 0.1}}},
        train={"max_steps": 12, "eval_steps": 4, "eval_max_samples": 8})
    study = tune(cfg)
    states = [t.state for t in study.trials]
    assert TrialState.PRUNED in states and states.count(TrialState.COMPLETE) >= 2
    report = build_report(study, tmp / "out" / "report.html")
    return study, report, cfg["storage"]


def _figure_json(page: str, key: str) -> str:
    """The data of one plot: the text from its div to the next plot's div."""
    start = page.index(f'id="plot-{key}"')
    end = page.find('id="plot-', start + 10)
    return page[start:end if end > 0 else len(page)]


def test_report_has_every_section_and_embeds_plotly_and_the_data(asha):
    study, report, _ = asha
    page = report.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    assert 'id="pbt"' not in page and 'id="selection"' not in page  # neither ran in this study
    # Works offline: plotly.js is inlined once, nothing is loaded from the network.
    plotlyjs = plotly.offline.get_plotlyjs()
    assert page.count(plotlyjs) == 1
    rest = page.replace(plotlyjs, "")
    assert not re.search(r"<script[^>]+src=", rest) and "cdn.plot.ly" not in rest and "http" not in rest
    for key in PLOTS:
        assert f'id="plot-{key}"' in page, key
    curves = _figure_json(page, "curves")
    for t in study.trials:  # every trial's learning curve, the pruned ones named and ended with a cross
        label = f"trial {t.number}" + (" (baseline)" if t.user_attrs.get("baseline") else "")
        assert f'"name":"{label}' in curves
        if t.state == TrialState.PRUNED:
            assert f'"name":"{label} [pruned]"' in curves
    assert '"x"' in curves and '"dash":"dash"' in curves
    for param in ("learning_rate", "weight_decay"):
        assert param in _figure_json(page, "parallel") and param in _figure_json(page, "importance")
    assert "Most important:" in page  # importance was computable: a plot and a sentence, not an excuse
    assert "Pareto front" in _figure_json(page, "pareto")
    assert "tuned beats the baseline" in page or "baseline is already the best" in page
    pruned = sum(t.state == TrialState.PRUNED for t in study.trials)
    assert f"{pruned} pruned" in page


def test_report_command(asha, tmp_path):
    _, _, storage = asha
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", "--storage", storage, "--study", "test", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "report written to" in res.output and '<section id="curves">' in out.read_text()
    res = CliRunner().invoke(app, ["report", "--storage", storage, "--study", "nope", "-o", str(out)])
    assert res.exit_code == 2 and "no study 'nope'" in res.output


def test_pbt_report_shows_lineage_and_schedules(tmp_path):
    cfg = small_config(tmp_path, search={
        "strategy": "pbt", "seed": 0, "baseline": False,
        "space": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
                  "weight_decay": {"low": 0.0, "high": 0.1}},
        "pbt": {"population_size": 3, "segment_steps": 4, "checkpoint_dir": str(tmp_path / "pbt")}},
        train={"max_steps": 8, "eval_steps": 4, "eval_max_samples": 8})
    study = tune(cfg)
    exploits = [e for t in study.trials for e in t.user_attrs.get("lineage", [])]
    assert exploits
    page = build_report(study, tmp_path / "pbt.html").read_text()
    assert '<section id="pbt">' in page and 'id="plot-pbt-lineage"' in page and 'id="plot-pbt-schedule"' in page
    lineage, schedule = _figure_json(page, "pbt-lineage"), _figure_json(page, "pbt-schedule")
    for t in study.trials:
        assert f'member {t.user_attrs["pbt_member"]} (trial {t.number})' in lineage
        assert f'member {t.user_attrs["pbt_member"]} (trial {t.number})' in schedule
    assert f"({len(exploits)} exploits)" in lineage and '"arrowhead":3' in lineage
    assert "learning_rate" in schedule and "weight_decay" in schedule
    assert "<h3>Exploits</h3>" in page and "<h3>Schedules</h3>" in page
    # best.yaml holds the winning member's final values, which differ from its start after an exploit
    best = study.best_trial
    assert len(best.user_attrs["schedule"]) > 1  # seed 0: the winner was re-seeded from a donor and perturbed
    final_lr = best.user_attrs["hparams_final"]["learning_rate"]
    assert best_config(study.optuna)["train"]["learning_rate"] == final_lr
    assert ("learning_rate", None, final_lr) in compare(study.optuna).rows  # no baseline in this study


def _fake_selection(study: optuna.Study) -> dict:
    """A selection record shaped like lmtune.select's, without re-training (that phase has its own tests)."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE][:2]
    cost = {"steps": 10, "fte": 1.0, "wall_seconds": 2.0}
    cands = [{"trial": t.number, "baseline": i == 0, "search_value": t.value, "validation_mean": t.value,
              "test_mean": t.value + 0.1, "test_std": 0.01, "gap": 0.1, "score": t.value + 0.1,
              "per_seed": {"0": {"validation": {"loss": t.value}, "test": {"loss": t.value + 0.09}, "cost": cost},
                           "1": {"validation": {"loss": t.value}, "test": {"loss": t.value + 0.11}, "cost": cost}}}
             for i, t in enumerate(done)]
    return {"metric": "loss", "rule": "mean", "winner": done[-1].number, "search_winner": done[-1].number,
            "candidates": cands, "flags": ["trial <1>: validation loss exceeds test"]}


def test_small_study_degrades_gracefully_and_escapes_user_strings(tmp_path):
    evil = "<script>alert('x')</script>"
    study = Study("a<b>study</b>", "memory://", space={"x": {"low": 0.0, "high": 1.0}, "kind": [evil, "plain"]},
                  strategy="random", metric="loss", direction="minimize", baseline={"x": 0.5, "kind": evil})

    def objective(trial):
        if trial.number == 1:
            raise ValueError(f"bad <img src=x onerror=alert(1)> {evil}")
        return {"loss": trial.params["x"] ** 2}

    study.optimize(objective, n_trials=2)  # one completed trial (no curve, no cost), one failed
    page = build_report(study, tmp_path / "small.html").read_text()
    assert evil not in page and "<img src=x" not in page and "<b>study</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page and "a&lt;b&gt;study&lt;/b&gt;" in page
    assert "needs at least 2 completed trials" in page  # importance: a sentence instead of a plot
    assert 'id="plot-importance"' not in page and "No trial has reported an evaluation yet." in page
    study.optimize(lambda t: {"loss": t.params["x"] ** 2}, n_trials=5)
    study.optuna.set_user_attr("selection", _fake_selection(study.optuna))
    page = build_report(study, tmp_path / "more.html").read_text()
    assert 'id="plot-importance"' in page and '<section id="selection">' in page and 'id="plot-selection"' in page
    assert "trial &lt;1&gt;: validation loss exceeds test" in page
    assert "4 re-training runs, 4 FTE, 8 s, on top of the budget used" in page


def test_importance_ranks_a_parameter_the_baseline_holds_outside_the_space():
    """The quickstart's baseline learning rate lies below the searched range, so trial 0 has no such param:
    importance must still rank the learning rate from the searched trials."""
    study = Study("imp", "memory://", space={"x": {"low": 0.0, "high": 1.0}, "y": {"low": 0.0, "high": 1.0}},
                  strategy="random", metric="loss", direction="minimize", baseline={"x": 5.0, "y": 0.5})
    study.optimize(lambda ctx: {"loss": ctx.params.get("x", 5.0) ** 2 + 0.01 * ctx.params["y"]}, n_trials=12)
    assert "x" not in study.trials[0].params
    values, plot = importances(study.optuna)
    assert set(values) == {"x", "y"} and max(values, key=values.get) == "x" and plot.figure is not None


def test_pareto_front():
    pts = [(1.0, 0.5, "a"), (2.0, 0.7, "b"), (2.0, 0.4, "c"), (3.0, 0.6, "d"), (4.0, 0.9, "e")]
    assert [p[2] for p in pareto_front(pts, maximize=True)] == ["a", "b", "e"]
    assert [p[2] for p in pareto_front(pts, maximize=False)] == ["a", "c"]


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium "
                                                  "(Debian: apt-get install chromium chromium-driver)")
def test_chromium_renders_every_plot_and_png_export(asha, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    _, report, _ = asha
    url = report.resolve().as_uri()
    dom = _chromium("--dump-dom", url, tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for key in PLOTS:  # plotly.js ran offline and drew each plot as SVG
        part = _figure_json(dom.stdout, key)
        assert 'class="main-svg"' in part, key
    assert dom.stdout.count('class="main-svg"') >= 2 * len(PLOTS)
    assert "scatterlayer" in _figure_json(dom.stdout, "curves") and "parcoords" in _figure_json(dom.stdout,
                                                                                               "parallel")
    shot = tmp_path / "page.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1200,3000", url, tmp=tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    _assert_not_blank(Image.open(shot), min_colors=200)
    # --png: every plot also as a PNG image, drawn by Kaleido through the same local Chromium.
    pngs = tmp_path / "png"
    res = CliRunner().invoke(app, ["report", "--storage", asha[2], "-o", str(tmp_path / "r.html"),
                                   "--png", str(pngs)])
    assert res.exit_code == 0, res.output
    assert sorted(p.stem for p in pngs.glob("*.png")) == sorted(PLOTS)
    for p in pngs.glob("*.png"):
        img = Image.open(p)
        assert img.width == 1200 and img.height >= 300, p
        _assert_not_blank(img, min_colors=20)


def test_png_export_without_a_browser_says_what_to_install(asha, tmp_path, monkeypatch):
    from lmtune.report import ReportError

    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))  # where Kaleido looks first
    with pytest.raises(ReportError, match="apt-get install chromium"):
        build_report(asha[0], tmp_path / "r.html", png_dir=tmp_path / "png")
    assert '<section id="curves">' in (tmp_path / "r.html").read_text()  # the HTML is written all the same


def _assert_not_blank(img, min_colors: int) -> None:
    rgb = img.convert("RGB")
    colors = rgb.getcolors(maxcolors=1 << 20) or []
    lo, hi = rgb.convert("L").getextrema()
    assert len(colors) >= min_colors and hi - lo > 100, (len(colors), lo, hi)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study_on_localhost(asha):
    study, _, storage = asha
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from lmtune.cli import app; app()", "dashboard",
                             "--storage", storage, "--study", "test", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # As in a terminal: a test run started in the background (`pytest &`, some CI
                            # runners) has SIGINT ignored, and a child would inherit that and never stop.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline, page = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode()
                    break
            except OSError:
                time.sleep(0.3)
        assert page is not None, f"the dashboard did not answer; exit code {proc.poll()}"
        assert "<title>Optuna Dashboard</title>" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
            summaries = json.loads(r.read())["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["test"]
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops it cleanly
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/dashboard/studies/" in out


def test_dashboard_refuses_memory_storage_and_a_busy_port():
    from lmtune.errors import ConfigError
    from lmtune.report.dashboard import create_server

    with pytest.raises(ConfigError, match="memory://"):
        create_server("memory://")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match="another --port"):
            create_server("sqlite://", port=s.getsockname()[1])
