"""The built-in tiny Llama, materialised on disk so it loads through the same `from_pretrained` path as a user's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmtune.builtin.smollm2 import GGUF_BUILTINS
from lmtune.builtin.tokenizer import build_tokenizer

BUILTIN_PREFIX = "builtin:"
VERSION = "v1"

# About 0.9M parameters: 4 layers of width 128, the size the design notes measured at ~10k tokens/s on 2 cores.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4},
    "micro": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 2},
}


def builtin_home() -> Path:
    return Path(os.environ.get("LMTUNE_HOME", Path.home() / ".cache" / "lmtune")) / "builtin"


def materialize(name: str) -> Path:
    """Write `builtin:<size>` (random init, fixed seed) with `save_pretrained` once and return its directory."""
    size = name.removeprefix(BUILTIN_PREFIX)
    if size not in SIZES:
        names = [*SIZES, *GGUF_BUILTINS]
        raise ValueError(f"unknown built-in model {name!r}; choose from {[BUILTIN_PREFIX + s for s in names]}")
    path = builtin_home() / f"{size}-{VERSION}"
    if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        return path
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **SIZES[size],
    )
    with torch.random.fork_rng():  # fixed weights, and the caller's random state left as it was
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    # Write to a temp dir and rename, so two processes materialising at once never see a half-written model.
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return path
