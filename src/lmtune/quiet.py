"""lmtune prints its own progress: Optuna's per-trial INFO lines and HF's load bars would drown it."""

from __future__ import annotations

import warnings

import optuna


def quiet_libraries() -> None:
    """Silence the libraries' own progress output, in every process that trains (workers, Ray tasks, PBT)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import transformers  # heavy: only processes that train pay for it

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # peft asks every LoRA model this through a name transformers 5 deprecates: one warning per trial.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
