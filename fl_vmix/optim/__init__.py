"""Optimisers: ST-Adam (our design of the paper's momentum-adapting Adam) and the registry by name."""

from fl_vmix.optim.registry import OPTIMIZERS, build_optimizer
from fl_vmix.optim.st_adam import STAdam

__all__ = ["OPTIMIZERS", "STAdam", "build_optimizer"]
