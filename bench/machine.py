"""What this machine can do: its measured dense-matmul peak, printed beside every timing.

Machines here differ up to 2x in speed from session to session, and not all of them run bf16: a time
means something only beside the peak measured in the same run, in the precision training uses there
(bf16 on CPUs with bf16 kernels, fp32 on the others: `classifier_lib.utils.device.cpu_runs_bf16`).

    python bench/machine.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from classifier_lib.utils.device import cpu_runs_bf16  # noqa: E402


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 2048, repeats: int = 10) -> float:
    """Measured dense matmul FLOP/s of this machine in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def training_peak() -> tuple[str, float]:
    """(precision, FLOP/s): the matmul peak in the precision CPU training runs in on this machine."""
    return ("bf16", matmul_peak(torch.bfloat16)) if cpu_runs_bf16() else ("fp32", matmul_peak(torch.float32))


def peak_line() -> str:
    """The peak as every benchmark prints it."""
    precision, flops = training_peak()
    note = "" if precision == "bf16" else " (this CPU has no bf16 kernels: training runs in fp32)"
    return f"{precision} matmul peak of this machine: {flops / 1e9:.0f} GFLOP/s{note}"


if __name__ == "__main__":
    print(peak_line())
