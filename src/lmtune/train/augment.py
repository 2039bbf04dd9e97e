"""Training-data augmentation as a hyperparameter: how many reworded copies of training rows to add.

Instruction data is small and its instructions are phrased one way, so a model can learn the phrasing instead of
the task. Adding rewordings that keep the answer is a cheap regulariser whose amount (`augmentation_ratio`) is
worth tuning like any other. Only training rows are augmented: validation and test data stay as written, so
scores stay comparable across trials.

Plug-in point: `train.augmentation: "package.module:function"` (or `"path/to/file.py:function"`) calls
`function(row, rng) -> row` on a copy of a training row in its file form (`instruction`/`input`/`output` or
`messages`), with a seeded `random.Random`; back-translation or an LLM paraphraser fits there.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError, DataError

Row = dict[str, Any]
AugmentFn = Callable[[Row, random.Random], Row]

# Rewordings of the whole instruction; {x} is the instruction, {lc} the same with a lower-case first letter.
TEMPLATES = ("{x}", "Please {lc}", "Task: {x}", "{x} Reply with the answer only.", "Instruction: {x}",
             "Here is a request. {x}", "{x} Be exact.", "Could you do this? {x}")
# Swaps that keep the meaning of common instruction words (the answer never depends on them).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "give": ("provide", "return", "state"), "write": ("produce", "compose"), "reverse": ("invert", "flip"),
    "sort": ("order", "arrange"), "count": ("tally",), "add": ("sum",), "numbers": ("values",),
    "letters": ("characters",), "letter": ("character",), "word": ("string",), "find": ("identify", "locate"),
    "show": ("display",), "list": ("enumerate",), "explain": ("describe",), "answer": ("reply",),
    "summarize": ("condense",), "summarise": ("condense",), "colour": ("color",), "number": ("value",),
    "text": ("passage",), "sentence": ("line",), "question": ("query",), "choose": ("pick", "select"),
}
_WORD = re.compile(r"[A-Za-z]+")


def swap_synonyms(text: str, rng: random.Random, p: float = 0.5) -> str:
    """Each word with a known synonym is swapped with probability `p`, keeping its capitalisation."""

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        options = SYNONYMS.get(word.lower())
        if not options or rng.random() >= p:
            return word
        new = rng.choice(options)
        return new.capitalize() if word[0].isupper() else new

    return _WORD.sub(swap, text)


def reword(instruction: str, rng: random.Random) -> str:
    """Synonym swaps, then one of the instruction templates."""
    x = swap_synonyms(instruction.strip(), rng)
    lc = x[:1].lower() + x[1:] if x[1:2].islower() or len(x) == 1 else x
    return rng.choice(TEMPLATES).format(x=x, lc=lc)


def paraphrase(row: Row, rng: random.Random) -> Row:
    """Reword the instruction of an Alpaca row (its `input` and `output` are kept as they are). A chat row has no
    separate instruction, so only a template framing is put before its first user message, whose content stays."""
    if "instruction" in row:
        return {**row, "instruction": reword(str(row["instruction"]), rng)}
    messages = [dict(m) for m in row.get("messages", [])]
    for m in messages:
        if m.get("role") == "user":
            frame = rng.choice(TEMPLATES[1:]).format(x="", lc="").strip()
            m["content"] = f"{frame}\n{m['content']}"
            break
    return {**row, "messages": messages}


def load_augmenter(spec: str) -> AugmentFn:
    """`paraphrase`, or a user function named `module:function` or `file.py:function`."""
    if spec == "paraphrase":
        return paraphrase
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no file {str(path)!r}")
            module_spec = importlib.util.spec_from_file_location(f"lmtune_user_augment_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        fn = getattr(module, name)
    except Exception as e:
        raise ConfigError(f"train.augmentation: cannot load {spec!r}: {type(e).__name__}: {e}; give "
                          "'package.module:function' (importable) or 'path/to/file.py:function'") from None
    if not callable(fn):
        raise ConfigError(f"train.augmentation: {spec!r} is not a function")
    return fn


def augmented_rows(rows: list[Row], spec: str, ratio: float, seed: int) -> list[tuple[int, Row]]:
    """round(ratio x len(rows)) augmented copies of training rows drawn with replacement, as (source index, row).

    The draw depends on the seed alone, so a trial is reproducible and a resumed PBT member sees the same data.
    """
    n = round(ratio * len(rows))
    if n == 0 or not rows:
        return []
    fn = load_augmenter(spec)
    rng = random.Random(f"augment-{seed}")
    out = []
    for _ in range(n):
        i = rng.randrange(len(rows))
        try:
            new = fn(copy.deepcopy(rows[i]), rng)
        except Exception as e:
            raise DataError(f"train.augmentation {spec!r} failed on training row {i}: {type(e).__name__}: {e}"
                            ) from None
        out.append((i, new))
    return out
