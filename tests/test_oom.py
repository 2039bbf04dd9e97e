"""Out-of-memory trials: retried with half the micro-batch and twice the accumulation, then failed as `oom`.

There is no GPU here, so memory runs out on purpose: the model's forward, in training and above a micro-batch
of MAX_FIT rows, asks the CPU allocator for 4 EiB. That allocation really fails (torch's
"DefaultCPUAllocator: can't allocate memory"), the path a CPU trial too big for RAM takes; a second variant
raises torch.OutOfMemoryError, the exception CUDA raises, which cannot be provoked without a GPU.
"""

import gc
import weakref

import pytest
import torch
from conftest import small_config
from optuna.trial import TrialState
from transformers import LlamaForCausalLM

from lmtune import tune
from lmtune.config import validate_config
from lmtune.train.oom import is_out_of_memory, train_fitting_memory
from lmtune.train.trainer import Trainer

MAX_FIT = 4


def _cpu_allocator_failure() -> None:
    torch.empty(1 << 62, dtype=torch.uint8)


def _cuda_oom() -> None:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture
def small_memory(request, monkeypatch):
    fail = getattr(request, "param", _cpu_allocator_failure)
    forward = LlamaForCausalLM.forward

    def forward_in_small_memory(self, input_ids=None, **kwargs):
        if torch.is_grad_enabled() and input_ids.shape[0] > MAX_FIT:
            fail()
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", forward_in_small_memory)


@pytest.mark.parametrize("small_memory", [_cpu_allocator_failure, _cuda_oom], ids=["cpu-allocator", "cuda-oom"],
                         indirect=True)
def test_oom_is_retried_with_half_the_micro_batch_then_failed(tmp_path, small_memory):
    cfg = small_config(tmp_path, search={"strategy": "grid", "n_trials": 5,
                                         "space": {"per_device_train_batch_size": [8, 32]}})
    study = tune(cfg)
    assert len(study.trials) == 3  # baseline (16), 8, 32: the study went on past the failed trial
    baseline = study.trials[0]
    trials = {t.params["per_device_train_batch_size"]: t for t in study.trials[1:]}
    assert baseline.state == TrialState.COMPLETE
    assert [(a["per_device_train_batch_size"], a["gradient_accumulation_steps"])
            for a in baseline.user_attrs["oom_attempts"]] == [(16, 1), (8, 2)]
    h = baseline.user_attrs["hparams"]
    assert (h["per_device_train_batch_size"], h["gradient_accumulation_steps"]) == (4, 4)
    assert baseline.user_attrs["cost"]["steps"] == 12  # the full run, at the same effective batch of 16
    assert len(baseline.user_attrs["curve"]) == 2  # the curve of the successful attempt only

    assert trials[8].state == TrialState.COMPLETE and len(trials[8].user_attrs["oom_attempts"]) == 1

    failed = trials[32]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("oom: out of memory at per_device_train_batch_size=8")
    assert [a["per_device_train_batch_size"] for a in failed.user_attrs["oom_attempts"]] == [32, 16, 8]


def test_retry_trains_like_the_unsplit_batch(tmp_path, small_memory, monkeypatch):
    """Half the micro-batch with twice the accumulation averages the loss over the same rows per step."""
    cfg = small_config(tmp_path / "a", search={"n_trials": 1}, train={"per_device_train_batch_size": 8})
    (retried,) = tune(cfg).trials
    assert retried.user_attrs["hparams"]["gradient_accumulation_steps"] == 2
    monkeypatch.undo()  # memory enough for the whole micro-batch of 8
    (unsplit,) = tune(small_config(tmp_path / "b", search={"n_trials": 1},
                                   train={"per_device_train_batch_size": 8})).trials
    assert "oom_attempts" not in unsplit.user_attrs
    assert retried.value == pytest.approx(unsplit.value, rel=1e-4)


def test_selection_retrains_are_retried_on_oom_too(tmp_path, small_memory):
    """The selection phase's re-training runs through the same retry: its seeds train at micro-batch 4."""
    cfg = small_config(tmp_path, select={"top_k": 1, "seeds": [0, 1]}, search={"n_trials": 2})
    sel = tune(cfg).optuna.user_attrs["selection"]
    assert sel["failed"] == [] and len(sel["candidates"]) == 2
    assert all(s["cost"]["steps"] == 12 for r in sel["candidates"] for s in r["per_seed"].values())


def test_a_failed_attempt_is_freed_before_the_retry_trains(tmp_path, small_memory):
    """Nothing keeps the out-of-memory attempt's model alive: on a GPU it would take the retry's memory."""
    cfg = validate_config(small_config(tmp_path))
    attempts = []

    def make_trainer(train_cfg):
        if attempts:
            gc.collect()
            assert all(ref() is None for ref in attempts), "an earlier attempt's trainer is still alive"
        trainer = Trainer(cfg.model, cfg.data, train_cfg)
        attempts.append(weakref.ref(trainer))
        return trainer

    trainer = train_fitting_memory(cfg.train, 2, make_trainer)
    assert trainer.cfg.per_device_train_batch_size == MAX_FIT and len(attempts) == 3


def test_oom_retries_zero_fails_at_once(tmp_path, small_memory):
    cfg = small_config(tmp_path, search={"n_trials": 1, "oom_retries": 0})
    (t,) = tune(cfg).trials
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith("oom")
    assert len(t.user_attrs["oom_attempts"]) == 1


def test_only_memory_errors_count_as_oom():
    with pytest.raises(RuntimeError) as real:
        _cpu_allocator_failure()
    assert is_out_of_memory(real.value)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_an_evaluation_out_of_memory_halves_the_eval_batch_and_a_failed_trial_keeps_its_cost(tmp_path, monkeypatch):
    """Evaluation (no gradients) above `limit` rows runs out of memory: the retry halves the evaluation batch
    too. When every evaluation runs out, the failed trial's cost counts the steps each attempt trained."""
    forward, limit = LlamaForCausalLM.forward, {"rows": 4}

    def evaluation_in_small_memory(self, input_ids=None, **kwargs):
        if not torch.is_grad_enabled() and input_ids.shape[0] > limit["rows"]:
            _cpu_allocator_failure()
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", evaluation_in_small_memory)
    cfg = small_config(tmp_path / "a", search={"n_trials": 1, "oom_retries": 1},
                       train={"per_device_eval_batch_size": 8})
    (trial,) = tune(cfg).trials
    assert trial.state == TrialState.COMPLETE and len(trial.user_attrs["oom_attempts"]) == 1
    assert trial.user_attrs["hparams"]["per_device_eval_batch_size"] == 4
    limit["rows"] = 0
    (failed,) = tune({**cfg, "storage": f"sqlite:///{tmp_path / 'b.db'}"}).trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"].startswith("oom:")
    # Two attempts, each trained to its first evaluation (step 6 of 12) before it ran out.
    assert failed.user_attrs["cost"]["steps"] == 12 and failed.user_attrs["cost"]["fte"] == 1.0
