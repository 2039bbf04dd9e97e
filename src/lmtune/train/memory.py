"""Peak memory of one training run, the `peak_memory_bytes` metric: what a config needs from a device.

On CUDA it is PyTorch's peak allocated memory on the run's device, reset when the run starts. On CPU it is the
process's peak resident set (Linux's VmHWM), reset by writing "5" to /proc/self/clear_refs; where that reset is
not allowed, or on another OS (the peak RSS from `getrusage`), the value is the process's peak so far, which a
trial run in its own process (`executor.workers`) keeps close to the run's own.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start counting this run's peak from the memory in use now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def peak_memory_bytes(device: torch.device) -> float:
    """The peak since `reset_peak_memory` (see the module docstring for where it is a process-lifetime peak)."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    with contextlib.suppress(OSError, ValueError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux kB
