"""GGUF checkpoints: de-quantized once with transformers' GGUF support and cached as a `save_pretrained` folder.

De-quantizing a GGUF file takes seconds to minutes (about 12-18 s for a 135M model on 2 cores); a study loads its
model once per trial, in several processes, so the dense fp32 model is written once under `$LMTUNE_HOME/gguf`
and every later load (trials, the proxy, the saved adapter's base) reads it like any local model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from lmtune.builtin.model import builtin_home
from lmtune.errors import ModelLoadError


def cache_dir(gguf_path: Path) -> Path:
    """One folder per GGUF file version: keyed by its path, size and modification time."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return builtin_home().parent / "gguf" / f"{gguf_path.stem}-{key}"


def dequantized(gguf_path: Path, field: str = "model.gguf_file") -> Path:
    """The `save_pretrained` folder of the de-quantized model and its tokenizer, written on first use."""
    out = cache_dir(gguf_path)
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"{field}: reading a GGUF file needs the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # dequantize=True: a plain dense model (trainable and serializable); packed GGUF layers are neither.
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        text = str(e).strip().splitlines()
        raise ModelLoadError(f"{field}: cannot load {str(gguf_path)!r} with transformers' GGUF support: "
                             f"{text[0] if text else type(e).__name__}") from None
    model.config.name_or_path = str(out)
    # Write to a temp dir and rename, so two processes de-quantizing at once never see a half-written model.
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"de-quantized from {gguf_path.resolve()}\n")
    try:
        tmp.rename(out)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out
