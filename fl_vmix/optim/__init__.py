"""Optimisers for training on VisualMixer-obfuscated images."""

from fl_vmix.optim.st_adam import STAdam

__all__ = ["STAdam"]
