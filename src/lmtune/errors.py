"""Errors a user can fix. The CLI prints these as one paragraph, never as a traceback."""

from typing import Any


class LmtuneError(Exception):
    """Base of every error whose message tells the user what to change."""


class ConfigError(LmtuneError):
    """The experiment YAML (or the dict handed to `tune`) is invalid."""


class DataError(LmtuneError):
    """A dataset file is missing or has a malformed row."""


class ModelLoadError(LmtuneError):
    """The model or tokenizer could not be loaded."""


class TrainArgumentError(ModelLoadError):
    """The model cannot take a training argument (LoRA target modules it lacks). Unlike a model that does not
    load, this is the trial's own value when that argument is searched: the trial fails and counts."""


# A trial that raises one of these failed on the study's own data, model or objective, whatever its parameters.
SETUP_ERRORS = (DataError, ModelLoadError, ConfigError)


class DivergedError(LmtuneError):
    """Training produced a NaN or infinite loss; a study records the trial as pruned, not failed. `result`
    is the run's TrainResult so far: the steps it cost before the loss blew up."""

    result: Any = None


class OutOfMemoryError(LmtuneError):
    """A trial ran out of memory even after its micro-batch was halved as often as allowed. `result` is a
    TrainResult summing what every attempt trained before it ran out, so the failure's cost is counted."""

    result: Any = None
