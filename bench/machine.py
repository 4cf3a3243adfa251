"""What this machine can do: its measured dense-matmul peak, printed beside every timing.

Machines here differ up to 2x in speed from session to session; a time means something only
beside the peak measured in the same run.
"""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 2048, repeats: int = 10) -> float:
    """Measured dense matmul FLOP/s of this machine in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)
