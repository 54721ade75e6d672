"""Learning-rate schedules, stepped once per optimizer step.

``poly_schedule`` is the paper's: lr_t = lr_0 · (1 - t / T)^power with power 1 (linear decay to 0
over the T steps of the run; T = 40k iterations in the paper, here the Trainer's
``estimated_stepping_batches``).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def poly_schedule(optimizer: Optimizer, total_steps: int, power: float = 1.0) -> LambdaLR:
    total = max(1, int(total_steps))
    return LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total) ** power)


def cosine_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    total = max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant_schedule(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0)
