"""Optimisers: ST-Adam (our design of the paper's momentum-adapting Adam) and the registry by name."""

from fl_vmix.optim.registry import LR_SCHEDULES, OPTIMIZERS, build_optimizer, round_lr
from fl_vmix.optim.st_adam import STAdam

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "STAdam", "build_optimizer", "round_lr"]
