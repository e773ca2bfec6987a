"""Protect a client's images with its privacy method, in chunks, and measure what the model will see."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from fl_vmix.data.client import DatasetIdentity
from fl_vmix.privacy import vfe
from fl_vmix.privacy.base import PrivacyMethod
from fl_vmix.privacy.similarity import mean_ssim_psnr

logger = logging.getLogger("fl_vmix.privacy")

OBFUSCATION_CHUNK = 4096
SIMILARITY_SAMPLE = 256  # SSIM costs ~1.6 ms per 32 px image on one thread: measure it on a fixed sample


@dataclass(frozen=True)
class ObfuscatedSplit:
    """Protected images as the model trains or evaluates on them, and measurements of them."""

    images: torch.Tensor  # float32 [N, C, H, W] in [0, 1], as the model's input before normalisation
    labels: torch.Tensor  # int64 [N]
    ids: torch.Tensor  # int64 [N]
    vfe_corrected: float
    vfe_reference: float
    seconds: float
    unreached: int  # images whose VFE target was out of reach (VisualMixer used its finest setting)
    ssim: float  # mean SSIM / PSNR of the first SIMILARITY_SAMPLE protected images against the clear ones
    psnr: float  # (NaN when not measured)


def obfuscate(
    method: PrivacyMethod,
    images: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    epoch: int,
    vfe_window: int,
    *,
    similarity: bool = True,
    device: torch.device | None = None,
    dataset: DatasetIdentity | None = None,
) -> ObfuscatedSplit:
    """Apply a client's privacy method to uint8 images, in chunks, and measure the result's VFE (and SSIM/PSNR).

    ``vfe_window``: the VFE window (the method's region size, ``PrivacySettings.region_size``).
    ``similarity=False`` skips SSIM/PSNR (a split whose similarity nobody reports, such as a test split).
    ``device``: where each chunk is protected (the client's training device; VisualMixer's CUDA path
    gives the same images as its CPU kernels). The protected split comes back to the CPU: a process
    keeps many clients' splits, and training moves one split at a time to the device.
    ``dataset``: what the ids index (``ClientData.dataset``); keyed methods bind it into their permutations
    and noise, so ids of two datasets or splits never share them. Pass it whenever it is known.
    """
    start = time.perf_counter()
    clear = torch.from_numpy(np.ascontiguousarray(images))
    sample_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    chunks, unreached = [], 0
    token = None if dataset is None else dataset.token
    for i in range(0, len(clear), OBFUSCATION_CHUNK):
        chunk = clear[i : i + OBFUSCATION_CHUNK]
        if device is not None:
            chunk = chunk.to(device)
        chunk = chunk.float().div_(255.0)
        ids_chunk = sample_ids[i : i + OBFUSCATION_CHUNK]
        protected = method.protect(chunk, ids_chunk if device is None else ids_chunk.to(device), epoch, token)
        chunks.append(protected.images.cpu())
        unreached += protected.num_unreached
    out = torch.cat(chunks) if chunks else torch.empty(0, *clear.shape[1:])
    seconds = time.perf_counter() - start
    if unreached:  # one line per split and round, however many chunks or batches it took
        logger.warning(
            "VisualMixer: %d of %d images stay below the target VFE with the finest setting: raise it with "
            "smaller block_sizes or a lower target",
            unreached,
            len(clear),
        )
    window = min(vfe_window, *out.shape[-2:]) if len(out) else vfe_window
    if similarity:
        ssim_value, psnr_value = mean_ssim_psnr(out[:SIMILARITY_SAMPLE], clear[:SIMILARITY_SAMPLE])
    else:
        ssim_value = psnr_value = math.nan
    return ObfuscatedSplit(
        images=out,
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        ids=sample_ids,
        vfe_corrected=float(vfe(out, window, "corrected").mean()) if len(out) else 0.0,
        vfe_reference=float(vfe(out, window, "reference").mean()) if len(out) else 0.0,
        seconds=seconds,
        unreached=unreached,
        ssim=ssim_value,
        psnr=psnr_value,
    )
