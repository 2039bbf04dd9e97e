"""Answer-quality metrics: exact match and token F1 (SQuAD-style), with the normalisation they share."""

from __future__ import annotations

import math
import re
import string
from collections import Counter

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
