"""Synthetic images for the attack tests: smooth, low-frequency content with a known answer."""

from __future__ import annotations

import math

import torch


def smooth_images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """``[batch, channels, size, size]`` in [0.2, 0.8]: a random plane wave plus a ramp per channel.

    Smooth so that edge-compatibility (jigsaw) and the TV prior (inversion) have the signal they rely
    on, and non-symmetric (random phase and ramp) so that exactly one arrangement is correct.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    a = torch.rand(batch, channels, 5, 1, 1, generator=g)
    wave = torch.sin(2 * math.pi * (a[:, :, 0] * xx + a[:, :, 1] * yy) + 6 * a[:, :, 2])
    ramp = (a[:, :, 3] - 0.5) * (xx - 0.5) + (a[:, :, 4] - 0.5) * (yy - 0.5)
    return (0.5 + 0.2 * wave + 0.2 * ramp).clamp(0, 1)


def one_thread():
    """Generator for an autouse fixture: tiny models run faster and reproducibly on one intra-op
    thread than on two contended ones; the previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
