"""Peak memory of a block of code: what the optimisation and decode benchmarks report.

    with PeakMemory(device) as mem:
        objective(lam)[0].backward()
    mem.extra      # bytes the block added at its peak over what was in use when it began

On a GPU it is the CUDA allocator's peak (``torch.cuda.max_memory_allocated``, reset at the start). On a CPU it is
the process's resident-set peak: Linux keeps it as ``VmHWM`` and resets it to the current size when 5 is written to
``/proc/self/clear_refs``, so the peak after the block is the block's own. Where that is not allowed it falls back
to ``ru_maxrss``, whose baseline may include a higher peak from before (loading the model), so ``extra`` undercounts;
``method`` says which was used. Measure each configuration in a fresh process, so that peaks do not mix.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

CUDA, RSS, MAXRSS = "torch.cuda.max_memory_allocated", "VmHWM after clear_refs", "ru_maxrss (includes loading)"


class PeakMemory:
    """Context manager measuring the peak memory the block adds on ``device`` (a torch device or its name).

    Attributes after the block: ``before``, ``peak``, ``extra`` (= peak - before), all in bytes; ``method``: how."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.method = CUDA if self.device.type == "cuda" else None
        self.before = self.peak = self.extra = 0

    def __enter__(self) -> "PeakMemory":
        if self.method == CUDA:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        elif _reset_peak_rss():
            self.method, self.before = RSS, _status_kib("VmRSS") * 1024
        else:
            self.method, self.before = MAXRSS, _maxrss()
        return self

    def __exit__(self, *exc) -> bool:
        if self.method == CUDA:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _status_kib("VmHWM") * 1024 if self.method == RSS else _maxrss()
        self.extra = self.peak - self.before
        return False

    def as_dict(self) -> dict:
        """The measurement as JSON-able numbers: bytes, and MiB for reading."""
        mib = 2**20
        numbers = {"before": self.before, "peak": self.peak, "extra": self.extra}
        return {"method": self.method, **numbers, **{f"{k}_mib": v / mib for k, v in numbers.items()}}


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (Linux): VmRSS = resident now, VmHWM = resident peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set peak (VmHWM) to the current size; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
