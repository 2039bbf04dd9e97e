"""Synthetic instruction tasks whose answers can be checked exactly.

The families differ in difficulty on purpose: string reversal is learnt in a few hundred steps, multi-digit
addition is not, so the best configs of a short budget stay well below 100 % exact match and the learning rate,
batch size and schedule visibly matter.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

Row = dict[str, str]

_WORDS_ALPHABET = string.ascii_lowercase[:12]
_KEYS = ["red", "blue", "gold", "jade", "navy", "rose", "sand", "teal", "wine", "lime", "plum", "mint"]


def _word(rng: random.Random, low: int = 3, high: int = 6) -> str:
    return "".join(rng.choice(_WORDS_ALPHABET) for _ in range(rng.randint(low, high)))


def _reverse(rng: random.Random) -> Row:
    w = _word(rng)
    return {"instruction": "Reverse the word.", "input": w, "output": w[::-1]}


def _sort(rng: random.Random) -> Row:
    w = _word(rng, 4, 6)
    return {"instruction": "Sort the letters.", "input": w, "output": "".join(sorted(w))}


def _count(rng: random.Random) -> Row:
    letter = rng.choice(_WORDS_ALPHABET[:4])
    w = "".join(rng.choice(_WORDS_ALPHABET[:4]) for _ in range(rng.randint(4, 9)))
    return {"instruction": f"Count the letter {letter}.", "input": w, "output": str(w.count(letter))}


def _add(rng: random.Random) -> Row:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return {"instruction": "Add the numbers.", "input": f"{a}+{b}", "output": str(a + b)}


def _parity(rng: random.Random) -> Row:
    n = rng.randint(0, 999)
    return {"instruction": "Is it even or odd?", "input": str(n), "output": "even" if n % 2 == 0 else "odd"}


def _lookup(rng: random.Random) -> Row:
    # A fixed code book (seeded independently of the split seed) that the model has to memorise.
    book = random.Random(1234)
    codes = {k: "".join(book.choice(string.digits) for _ in range(3)) for k in _KEYS}
    key = rng.choice(_KEYS)
    return {"instruction": "Give the code of the colour.", "input": key, "output": codes[key]}


TASKS: dict[str, Callable[[random.Random], Row]] = {
    "reverse": _reverse,
    "sort": _sort,
    "count": _count,
    "add": _add,
    "parity": _parity,
    "lookup": _lookup,
}


def generate(n: int, seed: int, tasks: list[str] | None = None) -> list[Row]:
    """`n` rows drawn round-robin from `tasks`; the same seed always gives the same rows."""
    names = tasks or list(TASKS)
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown built-in task(s) {unknown}; choose from {sorted(TASKS)}")
    rng = random.Random(seed)
    return [{**TASKS[names[i % len(names)]](rng), "task": names[i % len(names)]} for i in range(n)]


def splits(n_train: int, n_validation: int, n_test: int, seed: int, tasks: list[str] | None = None
           ) -> dict[str, list[Row]]:
    """Disjoint train/validation/test rows: each split has its own generator seed and overlaps are dropped."""
    out: dict[str, list[Row]] = {}
    seen: set[tuple[str, str]] = set()
    for offset, (name, n) in enumerate([("test", n_test), ("validation", n_validation), ("train", n_train)]):
        rows: list[Row] = []
        attempt = 0
        while len(rows) < n:
            batch = generate(n, seed * 1000 + offset * 100 + attempt, tasks)
            attempt += 1
            for row in batch:
                key = (row["instruction"], row["input"])
                # Held-out splits never repeat a train/eval prompt; the finite lookup table is the exception.
                if key in seen and row["task"] != "lookup":
                    continue
                if name != "train":
                    seen.add(key)
                rows.append(row)
                if len(rows) == n:
                    break
        out[name] = rows
    return {k: out[k] for k in ("train", "validation", "test")}
