"""Offline defaults: a tiny Llama, a character tokenizer and synthetic instruction tasks."""

from lmtune.builtin.model import BUILTIN_PREFIX, materialize
from lmtune.builtin.tasks import TASKS, splits

__all__ = ["BUILTIN_PREFIX", "TASKS", "materialize", "splits"]
