"""lmtune: tune the hyperparameters of language-model instruction fine-tuning with real trials.

    import lmtune
    study = lmtune.tune(lmtune.load_config("examples/quickstart.yaml"))
    print(study.best_trial.params)
"""

from lmtune.config import ExperimentConfig, load_config
from lmtune.errors import ConfigError, DataError, LmtuneError, ModelLoadError
from lmtune.space import SearchSpace
from lmtune.study import Study, TrialContext, tune

__all__ = ["ConfigError", "DataError", "ExperimentConfig", "LmtuneError", "ModelLoadError", "SearchSpace",
           "Study", "TrialContext", "load_config", "tune"]
__version__ = "0.1.0"
