"""bench/lcbench.py's report arithmetic and warm-start source lists (the numbers in BENCHMARKS.md rest on them).

The surrogate itself is not needed: runs are synthetic records of (epochs spent, epoch-52 value) events.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "lcbench.py"
_SPEC = importlib.util.spec_from_file_location("bench_lcbench", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
lcbench = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_lcbench"] = lcbench  # dataclasses resolve their module by name
_SPEC.loader.exec_module(lcbench)


def _records(rng: random.Random, n: int, budget: float) -> list[dict]:
    out = []
    for i in range(n):
        spent, events = 0, []
        while True:
            spent += rng.randint(1, 60)
            if spent > budget * lcbench.MAX_EPOCH:
                break
            if rng.random() < 0.5:
                events.append([spent, rng.uniform(50.0, 99.0)])
        out.append({"instance": f"t{i % 3}", "events": events})
    return out


def _scan(recs: list[dict], ref: dict[str, float], level: float, budget: float) -> float | None:
    """The same answer by trying every epoch in order."""
    for epochs in range(1, int(budget * lcbench.MAX_EPOCH) + 1):
        s = lcbench.summarize(recs, ref, epochs / lcbench.MAX_EPOCH)
        if s["k"] == s["n"] and s["mean"] <= level:
            return epochs / lcbench.MAX_EPOCH
    return None


@pytest.mark.parametrize("seed", range(5))
def test_budget_to_reach_matches_an_epoch_by_epoch_scan(seed: int) -> None:
    rng = random.Random(seed)
    budget = 6.0
    recs = _records(rng, 8, budget)
    ref = {"t0": 99.0, "t1": 99.5, "t2": 100.0}
    final = lcbench.summarize(recs, ref, budget)
    levels = [final["mean"] + d for d in (-0.5, 0.0, 0.3, 2.0, 10.0, 50.0)] if final["k"] == final["n"] else [50.0]
    for level in levels:
        assert lcbench.budget_to_reach(recs, ref, level, budget) == _scan(recs, ref, level, budget)


def test_budget_to_reach_waits_for_every_run_to_have_a_final_value() -> None:
    ref = {"a": 100.0}
    recs = [{"instance": "a", "events": [[52, 100.0]]}, {"instance": "a", "events": [[104, 90.0]]}]
    # At 1 FTE only the first run has a value (regret 0), so the mean over all runs is first defined at 2 FTE.
    assert lcbench.budget_to_reach(recs, ref, 5.0, 3.0) == 2.0
    assert lcbench.budget_to_reach(recs, ref, 4.0, 3.0) is None


def test_warm_sources_leave_the_task_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lcbench.WARM_FROM_ENV, raising=False)
    dev = lcbench.DEV_INSTANCES
    assert lcbench.warm_sources(dev[0]) == list(dev[1:])
    monkeypatch.setenv(lcbench.WARM_FROM_ENV, "1,2,3")
    assert lcbench.warm_sources("2") == ["1", "3"]
    assert lcbench.warm_sources("9") == ["1", "2", "3"]
