"""Step learning-rate schedule with a warm-up phase."""
from bisect import bisect_right

import torch


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Multiply the base lr by ``gamma`` at each milestone, after a warm-up.

    With ``last_epoch`` = k (the number of ``step()`` calls so far; the trainer steps
    once per iteration), the lr of every group is

        base_lr * warmup(k) * gamma ** (number of milestones <= k)

    where warmup(k) = 1 once k >= ``warmup_iters`` and before that is ``warmup_factor``
    ("constant") or rises linearly from ``warmup_factor`` to 1 ("linear").
    """

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_factor=1.0 / 3,
                 warmup_iters=500, warmup_method="linear", last_epoch=-1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {tuple(milestones)}")
        if warmup_method not in ("constant", "linear"):
            raise ValueError(f"SOLVER.WARMUP_METHOD must be 'constant' or 'linear', "
                             f"got {warmup_method!r}")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        warmup_factor = 1
        if self.last_epoch < self.warmup_iters:
            if self.warmup_method == "constant":
                warmup_factor = self.warmup_factor
            else:
                alpha = self.last_epoch / self.warmup_iters
                warmup_factor = self.warmup_factor * (1 - alpha) + alpha
        decay = self.gamma ** bisect_right(self.milestones, self.last_epoch)
        return [base_lr * warmup_factor * decay for base_lr in self.base_lrs]
