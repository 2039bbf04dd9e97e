"""Loading a model and tokenizer (local path, hub id or built-in), LoRA, and optimizer parameter groups."""

from __future__ import annotations

import inspect
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from lmtune.builtin.model import BUILTIN_PREFIX, materialize
from lmtune.builtin.smollm2 import GGUF_BUILTINS, wheel_gguf
from lmtune.config import ModelConfig, TrainConfig
from lmtune.errors import ModelLoadError, TrainArgumentError
from lmtune.train.gguf import dequantized

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
LAYER_KEY = re.compile(r"\.(?:layers|h|blocks|layer|block)\.(\d+)\.")  # a transformer block's index
_EMBEDDING = re.compile(r"embed|wte|wpe|shared")


def resolve_path(cfg: ModelConfig) -> str:
    """A directory or hub id for `from_pretrained`; built-in names and GGUF files are written to disk first
    (a GGUF file de-quantized once), so every later load takes the ordinary `save_pretrained` path."""
    name = cfg.name_or_path
    if name.removeprefix(BUILTIN_PREFIX) in GGUF_BUILTINS and name.startswith(BUILTIN_PREFIX):
        return str(dequantized(wheel_gguf(name.removeprefix(BUILTIN_PREFIX)), "model.name_or_path"))
    if cfg.gguf_file is not None:
        return str(dequantized(gguf_path(cfg)))
    if name.startswith(BUILTIN_PREFIX):
        try:
            return str(materialize(name))
        except ValueError as e:
            raise ModelLoadError(f"model.name_or_path: {e}") from None
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise ModelLoadError(f"model.name_or_path: {name!r} is a path but has no config.json; point it at a "
                                 "directory written by save_pretrained")
        return name
    if not _HUB_ID.match(name) or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model.name_or_path: {name!r} is neither an existing directory nor a hub id like "
                             "'org/model'; fix the path (relative paths are relative to the config file)")
    return name


def gguf_path(cfg: ModelConfig) -> Path:
    """`model.gguf_file` inside the folder `model.name_or_path` (or an absolute path to the file)."""
    assert cfg.gguf_file is not None
    path = Path(cfg.name_or_path).expanduser() / Path(cfg.gguf_file).expanduser()
    if not path.is_file():
        where = "" if Path(cfg.gguf_file).is_absolute() else f" in the folder {cfg.name_or_path!r}"
        raise ModelLoadError(f"model.gguf_file: no file {cfg.gguf_file!r}{where}; name_or_path is the local folder "
                             "that holds the .gguf file, gguf_file its name (GGUF files are not downloaded)")
    return path


def load_tokenizer(cfg: ModelConfig) -> Any:
    path = resolve_path(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.name_or_path: cannot load the tokenizer of {cfg.name_or_path!r}: "
                             f"{_first_line(e)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # common for Llama-family tokenizers; padding is masked anyway
    return tok


def check_model(cfg: ModelConfig) -> None:
    """Fail fast on an unusable model reference by loading only its config (no weights)."""
    path = resolve_path(cfg)
    if not Path(path).exists():
        _reach_hub(cfg.name_or_path, path)
    try:
        AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        hint = "" if Path(path).exists() else (
            f"; no folder {path!r} exists, so it was looked up as a hub id: if it is a local model, fix the path "
            "(relative paths are relative to the config file)")
        raise ModelLoadError(f"model.name_or_path: cannot load {cfg.name_or_path!r}: {_first_line(e)}{hint}") from None


def _reach_hub(name: str, repo_id: str) -> None:
    """A hub id is looked up over the network, and against a hub it cannot reach transformers retries for half a
    minute, printing a line each time, in every process that loads the model. One quick probe instead: when the
    hub is unreachable, a model in the local cache is used offline from then on (said once), and any other is
    refused at once."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        return
    try:
        model_info(repo_id, timeout=10)
        return
    except Exception as e:  # classified below: a missing or gated repo is for transformers to explain
        if not any(c.__name__ in ("TransportError", "ConnectionError", "Timeout", "TimeoutException")
                   for c in type(e).__mro__):
            return
        reason = _first_line(e)
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        os.environ["HF_HUB_OFFLINE"] = "1"  # this process and the workers it starts
        constants.HF_HUB_OFFLINE = True
        warnings.warn(f"the hub ({constants.ENDPOINT}) cannot be reached ({reason}); using the cached copy of "
                      f"{repo_id!r} offline", stacklevel=2)
        return
    raise ModelLoadError(f"model.name_or_path: {name!r} was looked up as a hub id, but the hub "
                         f"({constants.ENDPOINT}) cannot be reached ({reason}) and the model is not in the local "
                         "cache; connect and run again, download it beforehand, or give a local folder (if it is "
                         "one, fix the path: relative paths are relative to the config file)")


def load_model(cfg: ModelConfig, train: TrainConfig) -> PreTrainedModel:
    """The model with the trial's dropout applied to its config, and LoRA adapters when `use_lora`."""
    path = resolve_path(cfg)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        for key in dropout_keys(config):
            setattr(config, key, train.dropout)
        model = AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=cfg.trust_remote_code,
                                                     dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.name_or_path: cannot load {cfg.name_or_path!r}: {_first_line(e)}") from None
    if train.use_lora:
        model = apply_lora(model, train)
    return model


def dropout_keys(config: Any) -> list[str]:
    """The config fields that set dropout in the model's modules (names differ by architecture)."""
    return [k for k, v in config.to_dict().items()
            if isinstance(v, float) and ("dropout" in k or k.endswith("_pdrop")) and "classifier" not in k]


def apply_lora(model: PreTrainedModel, train: TrainConfig) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,
                      target_modules=train.lora_target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise TrainArgumentError(f"train.lora_target_modules: {_first_line(e)}") from None


def parameter_groups(model: torch.nn.Module, train: TrainConfig) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not biases or norms) and layer-wise LR decay by depth.

    With decay d and L layers, layer i gets lr * d^(L - i), embeddings lr * d^(L + 1), and everything above
    the last layer (final norm, head) the full lr: lower layers hold more general features and move less.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    layer_ids = [int(m.group(1)) for n in names if (m := LAYER_KEY.search(n))]
    n_layers = max(layer_ids) + 1 if layer_ids else 0
    groups: dict[tuple[float, float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        m = LAYER_KEY.search(name)
        if m:
            depth = n_layers - int(m.group(1))
        elif _EMBEDDING.search(name):
            depth = n_layers + 1
        else:
            depth = 0
        scale = train.layerwise_lr_decay ** depth
        is_matrix = param.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((scale, train.weight_decay if is_matrix else 0.0, is_matrix), []).append(param)
    # `apply_decay` marks the groups whose weight decay may be changed later (PBT); norms and biases stay at 0.
    return [{"params": ps, "lr": train.learning_rate * scale, "weight_decay": decay, "apply_decay": is_matrix}
            for (scale, decay, is_matrix), ps in groups.items()]


def selects_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes a boolean `logits_to_keep` mask (transformers' causal LMs do), so the
    vocabulary projection, the largest matmul of a small LLM, can skip the prompt positions the loss ignores."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's forward is **kwargs
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


@dataclass(frozen=True)
class FlopWeights:
    """Where a causal LM spends its training FLOPs. The input embedding is a table lookup and costs none; the
    output head (the vocabulary projection, tied or not) costs them only at the positions that get logits; every
    other weight costs them at every input token. Counting the embedding and head as per-token weights, as the
    plain 6 x parameters x tokens does, overstates a small or layer-dropped model's cost: the tied embedding and
    head are 21 % of SmolLM2-135M, but it scores only its answer positions."""

    per_token: int  # parameters used once per input token
    head: int  # parameters of the output projection, used once per scored position

    def flops(self, tokens: int, scored: int) -> float:
        """Training FLOPs: 6 per weight per use (2 forward, 4 backward), the usual estimate (Kaplan et al. 2020)."""
        return 6.0 * (self.per_token * tokens + self.head * scored)


def flop_weights(model: torch.nn.Module) -> FlopWeights:
    total, _ = count_parameters(model)
    embedding, head = (getattr(layer, "weight", None) for layer in
                       (model.get_input_embeddings(), model.get_output_embeddings()))
    tables = {id(w): w.numel() for w in (embedding, head) if w is not None}  # a tied head is the embedding
    return FlopWeights(per_token=total - sum(tables.values()), head=head.numel() if head is not None else 0)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
