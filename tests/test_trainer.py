import itertools
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lmtune.config import validate_config
from lmtune.errors import DivergedError, LmtuneError, ModelLoadError
from lmtune.train.data import IGNORE
from lmtune.train.model import flop_weights, load_model, parameter_groups
from lmtune.train.trainer import Trainer


def make_trainer(tmp_path, prepared=None, **train):
    from conftest import small_config

    cfg = validate_config(small_config(tmp_path, train=train))
    return Trainer(cfg.model, cfg.data, cfg.train, objective_metric="eval_loss", prepared=prepared).setup()


def test_training_lowers_validation_loss_and_reports_every_metric(tmp_path):
    t = make_trainer(tmp_path, max_steps=30, eval_steps=10, learning_rate=1e-2)
    before = t.evaluate()["eval_loss"]
    r = t.train()
    assert r.steps == 30 and r.stop_reason is None and len(r.history) == 3
    assert r.metrics["eval_loss"] < before - 0.5
    for key in ("eval_loss", "perplexity", "exact_match", "token_f1", "train_loss", "train_seconds",
                "tokens_per_second", "elapsed_seconds", "exact_match_add", "flops", "fte", "trainable_params",
                "peak_memory_bytes"):
        assert key in r.metrics
    assert r.metrics["flops"] == r.flops > 0 and r.metrics["fte"] == r.cost()["fte"] == 1.0
    assert r.metrics["trainable_params"] == t.n_trainable and r.metrics["peak_memory_bytes"] > 0
    assert r.metrics["perplexity"] == pytest.approx(math.exp(r.metrics["eval_loss"]))
    assert 0 <= r.metrics["exact_match"] <= 1 and r.tokens > 0


def test_flops_count_the_head_only_where_logits_are_scored(tmp_path):
    """The tied embedding is looked up (no FLOPs) and the head runs only at answer positions, so a run costs
    less than 6 x all parameters x tokens and more than the per-token weights alone."""
    t = make_trainer(tmp_path, max_steps=3, eval_steps=3)
    table = t.model.get_input_embeddings().weight
    assert t.model.get_output_embeddings().weight is table  # the built-in model ties them
    assert t.flop_weights.per_token == t.n_params - table.numel() and t.flop_weights.head == table.numel()
    scored = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in itertools.islice(make_trainer(
        tmp_path, max_steps=3, eval_steps=3)._batches, 3))
    r = t.train()
    assert 0 < scored < r.tokens
    assert r.flops == pytest.approx(6 * (t.flop_weights.per_token * r.tokens + t.flop_weights.head * scored))
    assert 6 * t.flop_weights.per_token * r.tokens < r.flops < 6 * t.n_params * r.tokens


def test_flops_count_an_untied_head_and_not_the_embedding():
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        tie_word_embeddings=False))
    weights = flop_weights(model)
    assert weights.head == 100 * 16
    assert weights.per_token == sum(p.numel() for p in model.parameters()) - 2 * 100 * 16


@pytest.mark.parametrize(("optim", "scheduler"), [
    ("adamw", "cosine"), ("sgd", "linear"), ("rmsprop", "constant_with_warmup"), ("adafactor", "step"),
    ("adamw", "polynomial"),
])
def test_every_optimizer_and_scheduler_trains(tmp_path, optim, scheduler):
    lr = 0.05 if optim == "sgd" else 3e-3
    t = make_trainer(tmp_path, optim=optim, lr_scheduler_type=scheduler, learning_rate=lr, warmup_ratio=0.2,
                     max_steps=8, eval_steps=8)
    assert type(t.optimizer).__name__.lower() == optim
    r = t.train()
    assert math.isfinite(r.metrics["eval_loss"]) and r.steps == 8
    assert t.scheduler.get_last_lr()[0] <= lr + 1e-12


def test_step_scheduler_decays_at_milestones(tmp_path):
    t = make_trainer(tmp_path, lr_scheduler_type="step", learning_rate=1e-2, max_steps=8, eval_steps=8,
                     lr_step_gamma=0.5, lr_step_milestones=[0.5])
    lrs = []
    for _ in range(8):
        lrs.append(t.scheduler.get_last_lr()[0])
        t.scheduler.step()
    assert lrs[:4] == [1e-2] * 4 and lrs[4:] == [5e-3] * 4


def _lrs(t, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(t.scheduler.get_last_lr()[0])
        t.optimizer.step()
        t.scheduler.step()
    return lrs


def test_warmup_stable_decay_holds_the_peak_then_decays_so_a_short_run_is_a_prefix_of_a_long_one(tmp_path):
    """Why the schedule exists: a trial stopped or paused before its decay has seen exactly the learning rates of
    a longer run, which a schedule tied to the total steps (linear, cosine) does not give."""
    wsd = {"lr_scheduler_type": "warmup_stable_decay", "learning_rate": 1e-2, "lr_decay_ratio": 0.25,
           "eval_steps": 8}
    short = _lrs(make_trainer(tmp_path, max_steps=8, **wsd), 8)
    long = _lrs(make_trainer(tmp_path, max_steps=16, **wsd), 16)
    assert short[:6] == long[:6] == [1e-2] * 6  # stable: the peak until the last quarter of the short run
    assert long[6:12] == [1e-2] * 6 and all(a > b for a, b in itertools.pairwise(long[12:]))  # then 4 decaying steps
    assert all(a > b for a, b in itertools.pairwise(short[6:]))
    cosine = {**wsd, "lr_scheduler_type": "cosine"}
    assert _lrs(make_trainer(tmp_path, max_steps=8, **cosine), 4) != _lrs(make_trainer(tmp_path, max_steps=16,
                                                                                      **cosine), 4)


def test_gradient_accumulation_counts_micro_batches(tmp_path):
    t = make_trainer(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=3, max_steps=-1,
                     num_train_epochs=1.0)
    assert t.total_steps == math.ceil(math.ceil(300 / 8) / 3)


def test_layerwise_lr_decay_and_weight_decay_groups(tmp_path):
    cfg = validate_config({"model": {"name_or_path": "builtin:micro"},
                           "train": {"learning_rate": 1.0, "layerwise_lr_decay": 0.5, "weight_decay": 0.1}})
    model = load_model(cfg.model, cfg.train)
    groups = parameter_groups(model, cfg.train)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["model.layers.1.self_attn.q_proj.weight"])] == 0.5   # top layer (2 layers)
    assert lr_of[id(named["model.layers.0.self_attn.q_proj.weight"])] == 0.25
    assert lr_of[id(named["model.embed_tokens.weight"])] == 0.125
    assert lr_of[id(named["model.norm.weight"])] == 1.0
    assert wd_of[id(named["model.layers.0.mlp.up_proj.weight"])] == 0.1
    assert wd_of[id(named["model.layers.0.input_layernorm.weight"])] == 0.0


def test_dropout_reaches_the_model_config(tmp_path):
    t = make_trainer(tmp_path, dropout=0.2, max_steps=2)
    assert t.model.config.attention_dropout == 0.2


def test_report_hook_can_stop_a_run(tmp_path):
    seen = []

    def report(step, metrics):
        seen.append(step)
        return step >= 4

    from conftest import small_config

    cfg = validate_config(small_config(tmp_path, train={"max_steps": 20, "eval_steps": 2}))
    t = Trainer(cfg.model, cfg.data, cfg.train, report=report).setup()
    r = t.train()
    assert seen == [2, 4] and r.steps == 4 and r.stop_reason == "report"


def test_early_stopping_with_patience(tmp_path):
    # A learning rate of ~0 cannot improve eval_loss by the threshold, so patience 2 stops after 3 evals.
    t = make_trainer(tmp_path, learning_rate=1e-12, max_steps=40, eval_steps=2, early_stopping_patience=2,
                     early_stopping_threshold=0.01)
    r = t.train()
    assert r.stop_reason == "early_stopping" and r.steps == 6


def test_nan_loss_raises_diverged(tmp_path):
    t = make_trainer(tmp_path, optim="sgd", learning_rate=1e6, momentum=0.0, max_grad_norm=0.0, max_steps=30)
    with pytest.raises(DivergedError, match="diverged"):
        t.train()


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(LmtuneError, match="fp16 needs a CUDA device"):
        make_trainer(tmp_path, fp16=True, device="cpu")


def test_bf16_autocast_trains(tmp_path):
    r = make_trainer(tmp_path, bf16=True, device="cpu", max_steps=4).train()
    assert math.isfinite(r.metrics["eval_loss"])


def test_same_seed_same_result(tmp_path):
    a = make_trainer(tmp_path, max_steps=6, dropout=0.1).train().metrics
    b = make_trainer(tmp_path, max_steps=6, dropout=0.1).train().metrics
    c = make_trainer(tmp_path, max_steps=6, dropout=0.1, seed=1).train().metrics
    assert a["eval_loss"] == b["eval_loss"] and a["exact_match"] == b["exact_match"]
    assert c["eval_loss"] != a["eval_loss"]


def test_saved_model_loads_back_through_from_pretrained(tmp_path):
    t = make_trainer(tmp_path, max_steps=4)
    r = t.train()
    out = t.save(tmp_path / "model", r)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    for (n, p), (_, q) in zip(t.model.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    # ...and a study can fine-tune it by path, as a user's own model.
    from conftest import small_config

    cfg = validate_config(small_config(tmp_path, model={"name_or_path": str(out)}, train={"max_steps": 4}))
    again = Trainer(cfg.model, cfg.data, cfg.train).setup()
    assert again.evaluate()["eval_loss"] == pytest.approx(r.metrics["eval_loss"], rel=1e-5)


def test_lora_trains_only_the_adapters(tmp_path):
    t = make_trainer(tmp_path, use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1,
                     lora_target_modules=["q_proj", "v_proj"], learning_rate=1e-2, max_steps=6)
    trainable = [n for n, p in t.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in t.model.named_parameters() if not p.requires_grad}
    t.train()
    assert all(torch.equal(p, frozen[n]) for n, p in t.model.named_parameters() if not p.requires_grad)
    out = t.save(tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file()


@pytest.mark.parametrize("packing", [False, True])
def test_logits_on_answer_positions_only_give_the_same_loss_and_gradients(tmp_path, packing):
    from conftest import small_config

    cfg = validate_config(small_config(tmp_path, data={"packing": packing},
                                       train={"use_lora": True, "lora_r": 4, "label_smoothing_factor": 0.1}))
    t = Trainer(cfg.model, cfg.data, cfg.train, objective_metric="eval_loss").setup()
    assert t.selects_logits
    batch = next(t._batches)
    assert (batch["labels"] == -100).float().mean() > 0.3  # prompts (and padding) are most positions

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        t.model.zero_grad()
        loss = t._loss_sum(batch, 0.1)
        loss.backward()
        return float(loss), [p.grad.clone() for p in t.model.parameters() if p.requires_grad]

    selected, selected_grads = loss_and_grads()
    t.selects_logits = False
    full, full_grads = loss_and_grads()
    assert selected == pytest.approx(full, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(selected_grads, full_grads, strict=True))


def test_bad_lora_targets_and_unknown_models_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="lora_target_modules"):
        make_trainer(tmp_path, use_lora=True, lora_target_modules=["no_such_proj"])
    from conftest import small_config

    for name, needle in [(str(tmp_path / "missing-model"), "neither an existing directory"),
                         (str(tmp_path), "has no config.json"), ("builtin:huge", "unknown built-in model")]:
        cfg = validate_config(small_config(tmp_path, model={"name_or_path": name}))
        with pytest.raises(ModelLoadError, match=needle):
            Trainer(cfg.model, cfg.data, cfg.train).setup()


def test_a_run_resumed_from_a_checkpoint_matches_an_unbroken_one(tmp_path):
    whole = make_trainer(tmp_path, max_steps=10, eval_steps=10, dropout=0.1)
    whole.train()
    first = make_trainer(tmp_path, max_steps=10, eval_steps=10, dropout=0.1)
    first.train(until_step=4)
    ckpt = first.save_state(tmp_path / "ckpt")
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "trainer_state.pt"]
    second = make_trainer(tmp_path, max_steps=10, eval_steps=10, dropout=0.1, prepared=first.prepared)
    second.load_state(ckpt)
    r = second.train()
    assert second.step == 10 and r.steps == 10
    for (n, p), (_, q) in zip(whole.model.named_parameters(), second.model.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), (n, (p - q).abs().max())


def test_hyperparameters_change_in_place(tmp_path):
    t = make_trainer(tmp_path, learning_rate=1e-3, weight_decay=0.01, max_steps=10, lr_scheduler_type="constant")
    t.train(until_step=2)
    t.set_hparams({"learning_rate": 2e-3, "weight_decay": 0.05, "adam_beta1": 0.8, "dropout": 0.3})
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    t.train(until_step=3)  # the scheduler's next step keeps the new rate
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    decays = {g["weight_decay"] for g in t.optimizer.param_groups}
    assert decays == {0.0, 0.05} and all(g["betas"][0] == 0.8 for g in t.optimizer.param_groups)
    assert t.model.model.layers[0].self_attn.attention_dropout == 0.3 and t.cfg.learning_rate == 2e-3
    with pytest.raises(LmtuneError, match="cannot change during a run"):
        t.set_hparams({"optim": "sgd"})
