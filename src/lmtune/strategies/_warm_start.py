"""Warm-start from past studies: their finished trials inform the model, without becoming trials of this study.

Earlier studies of the same model family and metric say where good configurations lie. Like transfer TPE
(Watanabe et al., IJCAI 2023) in its simplest form, the inner sampler sees the past trials (matched by parameter
name, kept only where their values lie in this study's space) as extra observations. Each study's values are
replaced by their quantile within that study (this one's too, in the sampler's view only), so a task where
every score is high does not crowd out the others; TPE needs only the order. They are never written to
this study's storage, so they count neither as its trials nor against its budget, and the source studies,
which may live on another storage URL, are only read.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from lmtune.errors import ConfigError
from lmtune.storage import mask_url, open_storage
from lmtune.strategies._wrapping import WrappingSampler

Source = tuple[str | None, str]  # (storage URL, or None for this study's own storage; study name)


def parse_sources(sources: Sequence[str | Mapping[str, str]]) -> list[Source]:
    """A study name (on this study's storage) or ``{study: NAME, storage: URL}`` per source."""
    return [(None, s) if isinstance(s, str) else (s.get("storage"), s["study"]) for s in sources]


def load_trials(sources: Sequence[Source], own: optuna.storages.BaseStorage | None) -> list[list[FrozenTrial]]:
    """The finished trials of each source study, read once (nothing is written to them; a SQLite file that
    does not exist is an error, not a new empty database)."""
    trials: list[list[FrozenTrial]] = []
    for url, name in sources:
        storage = open_storage(url, create=False) if url is not None else own
        assert storage is not None
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            where = "this study's storage" if url is None else mask_url(url)
            raise ConfigError(f"search.warm_start: no study {name!r} in {where}") from None
        trials.append(storage.get_all_trials(study_id, deepcopy=True, states=(TrialState.COMPLETE,)))
    return trials


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


class _WarmView:
    """The study plus the past trials, renumbered below zero so they never collide with this study's."""

    def __init__(self, study: Any, past: list[FrozenTrial]):
        self._study, self._past = study, past

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        own = _as_quantiles(self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache))
        own = [t for t in own if states is None or t.state in states]
        past = [t for t in self._past if states is None or t.state in states]
        trials = past + own
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


class PastStudies:
    """The finished trials of the source studies, read once however many samplers show them (``auto``'s GP and
    TPE both do). Sources on other storages are read at once, so a wrong URL or name stops the run before any
    trial; those on the study's own storage when the first trial asks."""

    def __init__(self, sources: Sequence[Source]):
        self.sources = list(sources)
        self._elsewhere = load_trials([s for s in self.sources if s[0] is not None], own=None)
        self._loaded: list[list[FrozenTrial]] | None = None

    def trials(self, own: optuna.storages.BaseStorage) -> list[list[FrozenTrial]]:
        if self._loaded is None:
            self._loaded = self._elsewhere + load_trials([s for s in self.sources if s[0] is None], own)
        return self._loaded


class WarmStartSampler(WrappingSampler):
    """Shows `inner` the finished trials of past studies beside this study's own.

    A past trial is kept with the parameters this study also searches whose values lie in this study's
    space (other parameters are dropped); one with none of them is ignored. With `per_source`, each source
    shows at most that many trials, spread evenly over its ranking from worst to best (both ends included):
    a GP's cost grows with every trial it models, TPE's hardly.

    Example::

        sampler = WarmStartSampler(optuna.samplers.TPESampler(seed=0), [("sqlite:///old.db", "lr-sweep")])
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, sources: Sequence[Source] | PastStudies,
                 per_source: int | None = None):
        self.inner, self.per_source = inner, per_source
        self.past = sources if isinstance(sources, PastStudies) else PastStudies(sources)
        self._past: list[FrozenTrial] = []
        self._space_key: tuple[str, ...] | None = None

    def _view(self, study: Any) -> _WarmView:
        space: dict[str, BaseDistribution] = {}
        for t in study._get_trials(deepcopy=False, states=None, use_cache=True):
            space.update(t.distributions)
        key = tuple(sorted(space))
        if key != self._space_key:  # this study's space as its trials have declared it so far
            self._past, self._space_key = _transfer(self.past.trials(study._storage), space, self.per_source), key
        return _WarmView(study, self._past)


def _as_quantiles(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials with each COMPLETE one's value replaced by its quantile (0 lowest, 1 highest) among them."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    order = sorted(complete, key=lambda t: t.value)  # type: ignore[arg-type, return-value]
    q = {t.number: (i / (len(order) - 1) if len(order) > 1 else 0.5) for i, t in enumerate(order)}
    out = []
    for t in trials:
        if t.number in q:
            t = copy.copy(t)
            t._values = [q[t.number]]
        out.append(t)
    return out


def _spread(kept: list[tuple[FrozenTrial, dict[str, Any]]], k: int | None) -> list[tuple[FrozenTrial, dict[str, Any]]]:
    """At most `k` of the (trial, params) pairs, evenly spaced in their order by value, both ends included."""
    if k is None or len(kept) <= k:
        return kept
    order = sorted(kept, key=lambda pair: pair[0].value)  # type: ignore[arg-type, return-value]
    n = len(order) - 1
    return [order[j] for j in sorted({round(i * n / max(k - 1, 1)) for i in range(k)})]


def _transfer(sources: list[list[FrozenTrial]], space: Mapping[str, BaseDistribution],
              per_source: int | None = None) -> list[FrozenTrial]:
    out: list[FrozenTrial] = []
    for trials in sources:
        kept = []
        for t in _as_quantiles(trials):
            params = {n: v for n, v in t.params.items() if n in space and _contains(space[n], v)}
            if params and t.value is not None:
                kept.append((t, params))
        for t, params in _spread(kept, per_source):
            number = -1 - len(out)
            out.append(optuna.trial.FrozenTrial(
                number=number, state=TrialState.COMPLETE, value=t.value, datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete, params=params, distributions={n: space[n] for n in params},
                user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=number))
    return out
