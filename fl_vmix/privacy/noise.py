"""Per-sample noise from the client's keyed PRF: secret, reproducible for the key holder, batch-independent.

A DP guarantee on noisy images holds only while the noise is unpredictable to the adversary: whoever
can regenerate it subtracts it. So the noise is drawn from :class:`~fl_vmix.privacy.keyed.KeyedPRF`
(AES-256 under a subkey of the client's key), never from a public seed. The caller's context binds the
mechanism, the dataset and the image shape (:mod:`fl_vmix.privacy.baselines`); the PRF's counter is
(sample id, epoch, word index), so a sample's noise does not depend on its batch, a second release of
the same image is the same release, and ``dynamic`` noise is fresh every epoch.

Two 32-bit words make one uniform of 53 bits in the open interval (0, 1); the inverse CDF turns it
into a Gaussian or Laplace value (Gaussian tails reach about 8.3 standard deviations).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fl_vmix.privacy.keyed import KeyedPRF

NoiseKind = Literal["gaussian", "laplace"]


def uniforms(words: np.ndarray) -> np.ndarray:
    """Pairs of 32-bit words ``[..., 2n]`` -> ``n`` float64 uniforms in (0, 1) with 53 random bits each."""
    high = (words[..., 0::2] >> np.uint32(5)).astype(np.float64)  # 27 bits
    low = (words[..., 1::2] >> np.uint32(6)).astype(np.float64)  # 26 bits
    return (high * 2.0**26 + low + 0.5) * 2.0**-53


def per_sample_noise(
    sample_ids: Tensor,
    shape: tuple[int, ...],
    *,
    prf: KeyedPRF,
    epoch: int = 0,
    kind: NoiseKind = "gaussian",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unit-scale noise ``[B, *shape]``: standard normal (``"gaussian"``) or Laplace of scale 1 (``"laplace"``).

    A pure function of (the PRF's key and context, sample id, epoch, position)."""
    if kind not in ("gaussian", "laplace"):
        raise ValueError(f"unknown noise kind {kind!r}; use 'gaussian' or 'laplace'")
    n = math.prod(shape)
    u = torch.from_numpy(uniforms(prf.words(sample_ids, epoch, 2 * n)))
    if kind == "gaussian":
        z = torch.special.ndtri(u)
    else:
        v = u - 0.5
        z = -torch.sign(v) * torch.log1p(-2.0 * v.abs())
    return z.to(dtype=dtype, device=device or sample_ids.device).reshape(len(sample_ids), *shape)
