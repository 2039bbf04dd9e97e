"""Every metric lmtune knows, registered once: its name, direction, where it is measured and shown.

Adding a metric is this file (the function and its `register` line) plus its tests. An answer metric
(`per_answer`) is computed by the trainer on every evaluation of a split, greedy answers against the references,
and from then on it can be an objective, a selection score on test data, a table column and a report curve.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and collapse white space, so '42.' and ' 42' both match '42'."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def perplexity(mean_loss: float) -> float:
    """exp(loss), capped so a diverged model reports inf instead of overflowing."""
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


@dataclass(frozen=True)
class Metric:
    name: str
    maximize: bool
    on_test: bool = False  # an evaluation of a split measures it, so the selection phase can score it on test data
    shown: bool = False  # a column of trial log lines and a row of the baseline-vs-tuned table
    plotted: bool = True  # a curve of the report (time and throughput are cost, not quality)
    per_answer: Callable[[str, str], float] | None = None  # (prediction, reference) -> score, averaged
    label: str = ""  # its row in the comparison table; default "validation <name>"
    cost: bool = False  # what a run spends (time, compute, memory, size): an axis of the report's trade-off plot

    @property
    def row_label(self) -> str:
        return self.label or f"validation {self.name}"


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is registered twice")
    METRICS[metric.name] = metric
    return metric


# The order is the order of tables and of the report's curve menu.
register(Metric("exact_match", maximize=True, on_test=True, shown=True, per_answer=exact_match))
register(Metric("token_f1", maximize=True, on_test=True, shown=True, per_answer=token_f1))
register(Metric("eval_loss", maximize=False, on_test=True, shown=True))
register(Metric("perplexity", maximize=False, on_test=True, shown=True))
register(Metric("tokens_per_second", maximize=True, shown=True, plotted=False, label="training tokens/s",
                cost=True))
register(Metric("train_loss", maximize=False))
register(Metric("train_seconds", maximize=False, plotted=False, cost=True))
register(Metric("elapsed_seconds", maximize=False, plotted=False))
# Cost as objectives and constraints. `fte` is the trial's share of its own planned run (1 unless cut short);
# `flops` is training compute as `lmtune.train.model.FlopWeights` counts it; `peak_memory_bytes` is CUDA's max
# allocated, or on CPU the process's peak resident memory (`lmtune.train.memory`).
register(Metric("fte", maximize=False, plotted=False, cost=True))
register(Metric("flops", maximize=False, plotted=False, cost=True, label="training FLOPs"))
register(Metric("trainable_params", maximize=False, plotted=False, cost=True))
register(Metric("peak_memory_bytes", maximize=False, plotted=False, cost=True, label="peak memory (bytes)"))


def answer_metrics() -> list[Metric]:
    """The metrics scored on greedy answers at every evaluation."""
    return [m for m in METRICS.values() if m.per_answer is not None]


def metrics_on_test() -> list[str]:
    return [m.name for m in METRICS.values() if m.on_test]


def shown_metrics() -> list[str]:
    return [m.name for m in METRICS.values() if m.shown]


def cost_metrics() -> list[str]:
    return [m.name for m in METRICS.values() if m.cost]


def is_plotted(key: str) -> bool:
    """Whether a curve entry is quality to plot: a registered metric marked so, or a per-task score such as
    exact_match_add (not registered); never the step."""
    return key != "step" and (key not in METRICS or METRICS[key].plotted)
