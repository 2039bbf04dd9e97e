"""lmtune: tune the hyperparameters of language-model instruction fine-tuning with real trials.

    import lmtune
    study = lmtune.tune(lmtune.load_config("examples/quickstart.yaml"))
    print(study.best_trial.params)
"""

from typing import Any

from lmtune.config import ExperimentConfig, load_config
from lmtune.errors import ConfigError, DataError, LmtuneError, ModelLoadError
from lmtune.space import SearchSpace
from lmtune.study import Study, TrialContext

__all__ = ["ConfigError", "DataError", "ExperimentConfig", "LmtuneError", "ModelLoadError", "SearchSpace",
           "Study", "TrialContext", "load_config", "tune"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `tune` brings torch and transformers with it (seconds to import); `lmtune.Study` on a user objective,
    # as the benchmarks use it, does not need them.
    if name == "tune":
        from lmtune.pipeline import tune

        return tune
    raise AttributeError(f"module 'lmtune' has no attribute {name!r}")
