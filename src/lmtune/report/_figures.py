"""The report's plots: Optuna's own where they fit (history, parallel coordinates, importance, slices), and
lmtune's for what only lmtune records (learning curves from each trial's ``curve``, quality vs cost, PBT).

Every builder returns a `Plot`: a figure, or None with a sentence saying why there is none, so a small or
unusual study still gives a report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import plotly.colors
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from lmtune import results
from lmtune.records import StudyRecord, TrialRecord
from lmtune.results import best_trial, ranked_trials, trial_curve, trial_status
from lmtune.train.metrics import METRICS, cost_metrics, is_plotted, shown_metrics
from lmtune.transfer import Rule

_STATE_STYLE = {  # how a trial's learning curve ends: (line dash, end marker)
    "complete": ("solid", "circle"),
    "early stopped": ("dot", "square"),
    "pruned": ("dash", "x"),
    "failed": ("dashdot", "cross"),
    "running": ("longdash", "triangle-right"),
}
_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 30, "t": 60, "b": 50}}


@dataclass
class Plot:
    key: str  # also the PNG's file name
    title: str
    figure: go.Figure | None
    note: str = ""


def _quiet(fn: Callable[..., go.Figure], *args: Any, **kwargs: Any) -> go.Figure:
    with warnings.catch_warnings():  # Optuna warns about experimental APIs and skipped trials
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _label(t: FrozenTrial) -> str:
    return f"trial {t.number}" + (" (baseline)" if TrialRecord(t).is_baseline else "")


def _style(fig: go.Figure, title: str, height: int | None = None) -> go.Figure:
    fig.update_layout(**_LAYOUT, title=title)
    if height:
        fig.update_layout(height=height)
    return fig


# ------------------------------------------------------------------------------------------------ Optuna's plots
def _target(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """What Optuna's plots show: the objective; a multi-objective study's first (Optuna asks which one)."""
    return (lambda t: t.values[0]) if StudyRecord(study).multi_objective else None


def history(study: optuna.Study) -> Plot:
    metric, title = StudyRecord(study).metric, "Optimization history"
    if not ranked_trials(study):
        return Plot("history", title, None, "No completed trial yet.")
    fig = _quiet(optuna.visualization.plot_optimization_history, study, target=_target(study), target_name=metric)
    return Plot("history", title, _style(fig, f"{title}: {metric} per trial and best so far"))


def parallel(study: optuna.Study) -> Plot:
    metric, title = StudyRecord(study).metric, "Parallel coordinates"
    done = ranked_trials(study)
    if not done or not any(t.params for t in done):
        return Plot("parallel", title, None, "Needs a completed trial with searched parameters.")
    fig = _quiet(optuna.visualization.plot_parallel_coordinate, study, target=_target(study), target_name=metric)
    return Plot("parallel", title, _style(fig, f"{title}: completed trials, coloured by {metric}"))


def importances(study: optuna.Study) -> tuple[dict[str, float], Plot]:
    """Optuna's fANOVA importance (PED-ANOVA when scikit-learn is missing), or why it cannot be computed."""
    metric, title = StudyRecord(study).metric, "Parameter importance"
    done = ranked_trials(study)
    varying = {p for p in {k for t in done for k in t.params}
               if len({repr(t.params.get(p)) for t in done}) > 1}
    if len(done) < 2 or not varying:
        why = (f"Parameter importance needs at least 2 completed trials whose searched parameters differ; this "
               f"study has {len(done)} completed trial{'s' if len(done) != 1 else ''}"
               + ("" if len(done) < 2 else " and no parameter that varies among them") + ".")
        return {}, Plot("importance", title, None, why)
    try:
        evaluator: optuna.importance.BaseImportanceEvaluator
        try:
            import sklearn  # noqa: F401  (fANOVA fits scikit-learn trees)

            evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
        except ImportError:
            evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
        # Optuna ranks only the parameters every trial has; a baseline value outside the space is not a param
        # of trial 0, which would drop it (often the learning rate) from the ranking: rank the searched trials'.
        searched = [set(t.params) for t in done if not TrialRecord(t).is_baseline]
        params = (sorted(set.intersection(*searched) & varying) or None) if searched else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params,
                                                             target=_target(study))
        fig = _quiet(optuna.visualization.plot_param_importances, study, evaluator=evaluator, params=params,
                     target=_target(study), target_name=metric)
    except Exception as e:  # Optuna raises several types for degenerate studies; the report goes on
        return {}, Plot("importance", title, None, f"Parameter importance could not be computed: {e}")
    values = {k: float(v) for k, v in values.items() if math.isfinite(v)}
    return values, Plot("importance", title, _style(fig, f"{title} for {metric} ({name}, {len(done)} trials)"))


def slices(study: optuna.Study, params: list[str]) -> Plot:
    metric, title = StudyRecord(study).metric, "Slice plots"
    if not ranked_trials(study) or not params:
        return Plot("slices", title, None, "Needs a completed trial with searched parameters.")
    fig = _quiet(optuna.visualization.plot_slice, study, params=params, target=_target(study), target_name=metric)
    fig = _style(fig, f"{title}: {metric} against {', '.join(params)}", height=420)
    fig.update_layout(width=None)
    return Plot("slices", title, fig)


# ------------------------------------------------------------------------------------------------ lmtune's plots
def _curve_points(t: FrozenTrial, metric: str) -> tuple[list[float], dict[str, list[float | None]]]:
    curve = trial_curve(t, metric)
    keys = [k for k in dict.fromkeys(k for _, c in curve for k in c) if is_plotted(k)]
    return [float(s) for s, _ in curve], {k: [c.get(k) for _, c in curve] for k in keys}


def learning_curves(study: optuna.Study) -> Plot:
    """One line per trial over its evaluations; pruned, early-stopped and failed trials end in a marker."""
    metric, title = StudyRecord(study).metric, "Learning curves"
    best = best_trial(study)
    data = [(t, *_curve_points(t, metric)) for t in study.get_trials(deepcopy=False)]
    data = [d for d in data if d[1]]
    if not data:
        return Plot("curves", title, None, "No trial has reported an evaluation yet.")
    available = set().union(*(set(d[2]) for d in data))
    metrics = [m for m in dict.fromkeys((metric, *METRICS, *sorted(available))) if m in available]
    fig = go.Figure()
    for t, steps, values in data:
        status = trial_status(t)
        dash, symbol = _STATE_STYLE[status]
        n = len(steps)
        special = TrialRecord(t).is_baseline or (best is not None and t.number == best.number)
        end_size = 12 if status != "complete" else 6
        params = "<br>".join(f"{k} = {_short(v)}" for k, v in t.params.items())
        fig.add_trace(go.Scatter(
            x=steps, y=values.get(metrics[0], [None] * n), mode="lines+markers",
            name=f"{_label(t)} [{status}]" if status != "complete" else _label(t),
            legendgroup=status, line={"dash": dash, "width": 3.5 if special else 1.6},
            marker={"symbol": ["circle"] * (n - 1) + [symbol], "size": [5] * (n - 1) + [end_size]},
            hovertemplate=f"<b>{_label(t)}</b> ({status})<br>step %{{x}}<br>%{{y:.4g}}<br>{params}<extra></extra>",
        ))
    buttons = [{"label": m, "method": "update",
                "args": [{"y": [v.get(m, [None] * len(s)) for _, s, v in data]}, {"yaxis.title.text": m}]}
               for m in metrics]
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.12,
                                    "yanchor": "top", "direction": "down"}] if len(metrics) > 1 else [],
                      xaxis_title="optimizer step", yaxis_title=metrics[0], legend_title_text="trial [how it ended]")
    return Plot("curves", title, _style(fig, f"{title} (✕ pruned, ■ early stopped; thick: baseline, best)",
                                        height=520))


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


_COSTS = (("device-hours", lambda c: c.get("wall_seconds", 0.0) / 3600),
          ("FTE (full-training equivalents)", lambda c: c.get("fte")),
          ("training tokens", lambda c: c.get("tokens")))


def pareto_front(points: list[tuple[float, float, Any]], maximize: bool) -> list[tuple[float, float, Any]]:
    """The points no other point beats on both cost (lower) and quality; sorted by cost."""
    front: list[tuple[float, float, Any]] = []
    for x, y, ref in sorted(points, key=lambda p: (p[0], -p[1] if maximize else p[1])):
        if not front or (y > front[-1][1] if maximize else y < front[-1][1]):
            front.append((x, y, ref))
    return front


def quality_vs_cost(study: optuna.Study) -> Plot:
    """Each finished trial's quality against what it cost, with the Pareto front of the completed ones."""
    if StudyRecord(study).multi_objective:
        return objectives_plot(study)
    metric, title = StudyRecord(study).metric, "Quality vs cost"
    maximize = StudyRecord(study).maximize
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        q = t.value if t.state == TrialState.COMPLETE else TrialRecord(t).metrics.get(metric)
        if q is not None and math.isfinite(q) and TrialRecord(t).cost:
            rows.append((t, float(q)))
    if not rows:
        return Plot("pareto", title, None, "No finished trial with a recorded cost and metric.")
    fig = go.Figure()
    for i, (axis, get) in enumerate(_COSTS):
        done = [(float(get(TrialRecord(t).cost) or 0.0), q, t) for t, q in rows if t.state == TrialState.COMPLETE]
        pruned = [(float(get(TrialRecord(t).cost) or 0.0), q, t) for t, q in rows if t.state == TrialState.PRUNED]
        front = pareto_front(done, maximize)
        for name, pts, marker in (("completed", done, {"size": 10, "symbol": "circle"}),
                                  ("pruned (quality when stopped)", pruned, {"size": 10, "symbol": "x"})):
            fig.add_trace(go.Scatter(
                x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=name, marker=marker,
                text=[_label(p[2]) for p in pts], visible=i == 0,
                hovertemplate=f"%{{text}}<br>{axis} %{{x:.4g}}<br>{metric} %{{y:.4g}}<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers", name="Pareto front",
            line={"shape": "hv", "color": "crimson"}, marker={"size": 13, "symbol": "circle-open"},
            text=[_label(p[2]) for p in front], visible=i == 0,
            hovertemplate=f"%{{text}} (Pareto)<br>{axis} %{{x:.4g}}<br>{metric} %{{y:.4g}}<extra></extra>"))
    n = len(_COSTS)
    buttons = [{"label": axis, "method": "update",
                "args": [{"visible": [j // 3 == i for j in range(3 * n)]}, {"xaxis.title.text": axis}]}
               for i, (axis, _) in enumerate(_COSTS)]
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "top"}],
                      xaxis_title=_COSTS[0][0], yaxis_title=f"{metric} ({'higher' if maximize else 'lower'} is better)")
    return Plot("pareto", title, _style(fig, f"{title}: {metric} against cost, Pareto front of completed trials",
                                        height=480))


def objectives_plot(study: optuna.Study) -> Plot:
    """A multi-objective study's trials on any two of its objectives and cost metrics (menus pick x and y), with
    the Pareto front of every objective, the baseline, the picked point and the infeasible trials marked."""
    stored, title = StudyRecord(study), "Quality vs cost"
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not done:
        return Plot("pareto", title, None, "No completed trial yet.")
    objectives = [n for n, _ in stored.objectives]
    axes = [a for a in dict.fromkeys((*objectives, *cost_metrics(), *shown_metrics()))
            if all(TrialRecord(t).measure(a) is not None for t in done)]
    front = {t.number for t in results.pareto_front(study)}
    picked = (stored.picked or {}).get("trial")
    groups = [("feasible", [t for t in done if TrialRecord(t).feasible and t.number not in front],
               {"size": 9, "symbol": "circle", "color": "steelblue"}),
              ("infeasible (breaks a constraint)", [t for t in done if not TrialRecord(t).feasible],
               {"size": 9, "symbol": "x", "color": "grey"}),
              ("Pareto front", [t for t in done if t.number in front],
               {"size": 13, "symbol": "circle", "color": "crimson"}),
              ("baseline", [t for t in done if TrialRecord(t).is_baseline],
               {"size": 18, "symbol": "star-open", "color": "black", "line": {"width": 2}}),
              ("picked", [t for t in done if t.number == picked],
               {"size": 22, "symbol": "diamond-open", "color": "green", "line": {"width": 3}})]
    groups = [g for g in groups if g[1]]
    x0, y0 = (objectives[1] if len(objectives) > 1 else axes[0]), objectives[0]

    def coords(axis: str) -> list[list[float | None]]:
        return [[TrialRecord(t).measure(axis) for t in trials] for _, trials, _ in groups]

    fig = go.Figure()
    for (name, trials, marker), xs, ys in zip(groups, coords(x0), coords(y0), strict=True):
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name=name, marker=marker, text=[_label(t) for t in trials],
            hovertemplate="%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra>" + name + "</extra>"))

    def menu(axis_key: str, x: float, label: str) -> dict[str, Any]:
        return {"buttons": [{"label": f"{label}: {a}", "method": "update",
                             "args": [{axis_key: coords(a)}, {f"{axis_key}axis.title.text": _axis_title(a)}]}
                            for a in axes],
                "x": x, "xanchor": "left", "y": 1.14, "yanchor": "top", "direction": "down",
                "active": axes.index(x0 if axis_key == "x" else y0)}

    fig.update_layout(updatemenus=[menu("x", 0.0, "x"), menu("y", 0.45, "y")],
                      xaxis_title=_axis_title(x0), yaxis_title=_axis_title(y0))
    return Plot("pareto", title, _style(fig, f"{title}: {' vs '.join(objectives)}; the front joins the feasible "
                                             "trials no other beats on every objective", height=520))


def _axis_title(metric: str) -> str:
    better = "higher" if metric in METRICS and METRICS[metric].maximize else "lower"
    return f"{metric} ({better} is better)"


# ------------------------------------------------------------------------------------------------ PBT
def _final_step(t: FrozenTrial) -> float:
    c = TrialRecord(t).cost
    steps = [float(p.get("step", 0)) for p in TrialRecord(t).curve]
    return max([*steps, float(c.get("steps") or 0)], default=0.0)


def pbt_schedule(study: optuna.Study, members: list[FrozenTrial]) -> Plot:
    """Each member's hyperparameters over training steps, one panel per hyperparameter."""
    title = "PBT hyperparameter schedules"
    params = list(dict.fromkeys(k for t in members for e in TrialRecord(t).schedule for k in e
                                if k != "step"))
    numeric = [p for p in params if all(isinstance(e.get(p), int | float) for t in members
                                        for e in TrialRecord(t).schedule if p in e)]
    if not numeric:
        return Plot("pbt-schedule", title, None, "No member recorded a numeric hyperparameter schedule.")
    fig = make_subplots(rows=len(numeric), cols=1, shared_xaxes=True, subplot_titles=numeric, vertical_spacing=0.08)
    palette = plotly.colors.qualitative.Plotly
    for i, t in enumerate(members):
        schedule = TrialRecord(t).schedule
        end = _final_step(t)
        member = TrialRecord(t).pbt_member
        for row, p in enumerate(numeric, start=1):
            pts = [(float(e["step"]), e[p]) for e in schedule if p in e]
            if pts and end > pts[-1][0]:
                pts.append((end, pts[-1][1]))
            fig.add_trace(go.Scatter(
                x=[s for s, _ in pts], y=[v for _, v in pts], mode="lines+markers",
                line={"shape": "hv", "color": palette[i % len(palette)]},
                name=f"member {member} (trial {t.number})", legendgroup=f"m{member}", showlegend=row == 1,
                hovertemplate=f"member {member}<br>step %{{x}}<br>{p} = %{{y:.4g}}<extra></extra>"), row=row, col=1)
            dist = t.distributions.get(p)
            if getattr(dist, "log", False):
                fig.update_yaxes(type="log", row=row, col=1)
    fig.update_xaxes(title_text="optimizer step", row=len(numeric), col=1)
    return Plot("pbt-schedule", title, _style(fig, f"{title}: each member's values over training",
                                              height=260 * len(numeric) + 120))


def pbt_lineage(study: optuna.Study, members: list[FrozenTrial]) -> Plot:
    """Members as rows over steps; an arrow per exploit from the donor to the member that copied its weights."""
    title = "PBT lineage"
    metric = StudyRecord(study).metric
    best = StudyRecord(study).pbt.get("best_member")
    fig = go.Figure()
    for t in members:
        m = TrialRecord(t).pbt_member
        curve = [c for c in TrialRecord(t).curve if "step" in c]
        xs = [0.0] + [float(c["step"]) for c in curve]
        scores = [None] + [c.get(metric) for c in curve]
        fig.add_trace(go.Scatter(
            x=xs, y=[m] * len(xs), mode="lines+markers", name=f"member {m} (trial {t.number})",
            line={"width": 5 if m == best else 2}, customdata=scores,
            hovertemplate=f"member {m}<br>step %{{x}}<br>{metric} %{{customdata:.4g}}<extra></extra>"))
    events = [(TrialRecord(t).pbt_member, e) for t in members for e in TrialRecord(t).lineage]
    for receiver, e in events:
        donor = e.get("copied_from")
        if donor is None:
            continue
        fig.add_annotation(x=e.get("step", 0), y=receiver, ax=e.get("step", 0), ay=donor, xref="x", yref="y",
                           axref="x", ayref="y", showarrow=True, arrowhead=3, arrowsize=1.5, arrowwidth=2,
                           arrowcolor="crimson", text="", hovertext=(
                               f"step {e.get('step')}: member {receiver} copied member {donor} "
                               f"({metric} {_short(e.get('replaced_score'))} → {_short(e.get('donor_score'))})"))
    fig.update_layout(xaxis_title="optimizer step", yaxis_title="member",
                      yaxis={"tickmode": "array", "tickvals": [TrialRecord(t).pbt_member for t in members]})
    note = "" if events else "No member exploited another: every member trained on its own weights."
    return Plot("pbt-lineage", title, _style(fig, f"{title}: arrows point from the donor to the member that took "
                                                  f"its weights ({len(events)} exploits)",
                                             height=max(320, 60 * len(members) + 160)), note)


# ------------------------------------------------------------------------------------------------ selection
def selection_plot(selection: dict[str, Any]) -> Plot:
    """Per-seed test (and validation) scores of each candidate the selection phase re-trained."""
    title = "Selection: test scores per seed"
    metric = selection.get("metric", "value")
    cands = [c for c in selection.get("candidates") or [] if isinstance(c, dict)]
    if not cands:
        return Plot("selection", title, None, "The selection phase recorded no candidate.")
    fig = go.Figure()
    for split, symbol in (("test", "circle"), ("validation", "diamond-open")):
        xs, ys, seeds = [], [], []
        for c in cands:
            name = f"trial {c.get('trial')}" + (" (baseline)" if c.get("baseline") else "")
            for seed, res in (c.get("per_seed") or {}).items():
                v = (res.get(split) or {}).get(metric) if isinstance(res, dict) else None
                if v is not None:
                    xs.append(name), ys.append(v), seeds.append(seed)
        if ys:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=split, customdata=seeds,
                                     marker={"symbol": symbol, "size": 11},
                                     hovertemplate=f"%{{x}} seed %{{customdata}}<br>{split} {metric} %{{y:.4g}}"
                                                   "<extra></extra>"))
    if not fig.data:
        return Plot("selection", title, None, "The selection phase recorded no per-seed scores.")
    fig.update_layout(yaxis_title=metric, xaxis_title="candidate")
    return Plot("selection", title, _style(fig, f"{title} ({metric})", height=420))


# ------------------------------------------------------------------------------------------------ transfer fit
def transfer_fit_plot(info: dict[str, Any]) -> Plot:
    """Each rung's optimum (± its standard error) against training compute, the fitted law along the path from
    the smallest rung to the target, and the target's prediction with its band; one panel per hyperparameter."""
    title = "Scaling-law transfer: each rung's optimum, the fitted law and the prediction"
    rule = Rule.from_dict(info["rule"])
    names = list(info.get("prediction") or rule.laws)
    target = info.get("target") or {}
    if not rule.rungs or not target.get("n_tokens"):
        return Plot("transfer-fit", title, None, "No rung recorded an optimum, so there is nothing to plot.")
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    compute = [6 * r.n_params * r.n_tokens for r in rule.rungs]
    n_t, d_t = float(target["n_params"]), float(target["n_tokens"])
    first = min(rule.rungs, key=lambda r: r.n_params * r.n_tokens)
    for col, name in enumerate(names, 1):
        rungs = [(c, r) for c, r in zip(compute, rule.rungs, strict=True) if name in r.log_opt]
        ys = [math.exp(r.log_opt[name]) for _, r in rungs]
        up = [math.exp(r.log_opt[name] + r.log_se[name]) - y for (_, r), y in zip(rungs, ys, strict=True)]
        down = [y - math.exp(r.log_opt[name] - r.log_se[name]) for (_, r), y in zip(rungs, ys, strict=True)]
        fig.add_trace(go.Scatter(
            x=[c for c, _ in rungs], y=ys, mode="markers", name=f"{name}: rung optima", marker={"size": 10},
            error_y={"type": "data", "symmetric": False, "array": up, "arrayminus": down},
            text=[r.method for _, r in rungs], hovertemplate="compute %{x:.3g}<br>optimum %{y:.3g} (%{text})"
                                                             "<extra></extra>"), row=1, col=col)
        law = rule.laws[name]
        if law.usable:  # the law along the straight path (in log sizes) from the smallest rung to the target
            path = [(math.exp((1 - u) * math.log(first.n_params) + u * math.log(n_t)),
                     math.exp((1 - u) * math.log(first.n_tokens) + u * math.log(d_t))) for u in
                    (i / 40 for i in range(41))]
            fig.add_trace(go.Scatter(x=[6 * n * d for n, d in path],
                                     y=[math.exp(law.log_predict(n, d)[0]) for n, d in path], mode="lines",
                                     name=f"{name}: fitted law", line={"dash": "dash"}), row=1, col=col)
            value, se = law.log_predict(n_t, d_t)
            fig.add_trace(go.Scatter(
                x=[6 * n_t * d_t], y=[math.exp(value)], mode="markers", name=f"{name}: target's prediction",
                marker={"symbol": "star", "size": 16},
                error_y={"type": "data", "symmetric": False, "array": [math.exp(value + se) - math.exp(value)],
                         "arrayminus": [math.exp(value) - math.exp(value - se)]}), row=1, col=col)
        fig.update_xaxes(type="log", title_text="training compute (6 N D)", row=1, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
    unusable = [f"{n}: {rule.laws[n].reason}" for n in names if not rule.laws[n].usable]
    return Plot("transfer-fit", title, _style(fig, title, height=440), "; ".join(unusable))
