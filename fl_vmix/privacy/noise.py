"""Counter-based per-sample noise: a pure function of (seed, epoch, stream, sample id, position).

A counter-based generator (SplitMix64 finaliser over 64-bit integer tensors, fully vectorised) turns
each such tuple into a uniform number, then into Gaussian or Laplace noise by the inverse CDF. So the
same inputs always give the same output, one sample's noise does not depend on which other samples
share its batch or on the batch order, and no global RNG is touched. (A ``torch.Generator`` seeded
once per batch would make a sample's noise depend on its batch neighbours; seeding one per sample
needs a Python loop.)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from fl_vmix.privacy.keyed import hash_fields

_NOISE_STREAM = 0x4E015E


def per_sample_noise(
    sample_ids: Tensor,
    shape: tuple[int, ...],
    *,
    seed: int,
    epoch: int = 0,
    stream: int = 0,
    kind: Literal["gaussian", "laplace"] = "gaussian",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unit-scale noise ``[B, *shape]``, a pure function of (seed, epoch, stream, sample id, position).

    ``kind="gaussian"``: standard normal; ``kind="laplace"``: Laplace with scale 1 (variance 2).  Uniforms carry
    53 random bits, so the Gaussian tails reach about 8.3 standard deviations.  ``stream`` separates independent
    draws for the same sample (e.g. two noise terms in one method).
    """
    if kind not in ("gaussian", "laplace"):
        raise ValueError(f"unknown noise kind {kind!r}; use 'gaussian' or 'laplace'")
    ids = sample_ids.to(device=device or sample_ids.device, dtype=torch.int64).reshape(-1, 1)
    n = math.prod(shape)
    positions = torch.arange(n, dtype=torch.int64, device=ids.device).unsqueeze(0)
    bits = hash_fields(seed, _NOISE_STREAM, epoch, stream, ids, positions, device=ids.device)  # [B, n]
    u = (((bits >> 11) & ((1 << 53) - 1)).to(torch.float64) + 0.5) * 2.0**-53  # uniform in the open interval (0, 1)
    if kind == "gaussian":
        z = torch.special.ndtri(u)
    else:
        v = u - 0.5
        z = -torch.sign(v) * torch.log1p(-2.0 * v.abs())
    return z.to(dtype).reshape(ids.shape[0], *shape)
