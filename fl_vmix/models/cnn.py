"""A small CNN that trains quickly on a CPU and is compatible with Opacus DP-SGD."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # GroupNorm instead of BatchNorm: per-sample gradients (Opacus) forbid batch statistics.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.GroupNorm(num_groups=8, num_channels=out_channels),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks (32-64-128 channels, GroupNorm, ReLU), two max-pools, a 2-layer head.

    The adaptive average pool to 2x2 makes it accept any image size >= 4 px (28x28 MNIST-like
    and 32x32 CIFAR-like inputs alike) with the same number of parameters (about 160k for 3 input
    channels and 10 classes).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, 32),
            nn.MaxPool2d(2),
            _conv_block(32, 64),
            nn.MaxPool2d(2),
            _conv_block(64, 128),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 2 * 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images))
