"""Numba kernels of the CPU path (:mod:`fl_vmix.privacy.permutations`, :mod:`fl_vmix.privacy.region_energy`).

Each kernel computes the same integer function as its PyTorch twin (the path for other devices, and the
tests' oracle), in one compiled pass: the permutations (Fisher-Yates over a region's pixels from its PRF
words, then per level the compaction of each block group's top-left pixels), the integer region
energies, and the per-region level selection. Images run in parallel (``prange``); each writes only its
own slice, so results do not depend on the thread count. Compiled on first use and cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def sources_kernel(
    words, region_origin, region_shape, pixels_of_shape, local_to_global, pixel_level,
    rep_group, seq_index, delta, group_base, word_offset, chan_offset, out,
):  # pragma: no cover - compiled; checked against the PyTorch implementation in the tests
    batch = words.shape[0]
    num_levels = out.shape[0]
    channels = out.shape[2]
    pixels = out.shape[3]
    regions = region_origin.shape[0]
    n_max = local_to_global.shape[1]
    for b in prange(batch):
        arrangement = np.empty(n_max, dtype=np.int64)
        sequence = np.empty(n_max, dtype=np.int64)
        filled = np.empty(4, dtype=np.int64)
        source_channel = np.empty(channels, dtype=np.int64)
        own_words = words[b]
        for r in range(regions):
            s = region_shape[r]
            n = pixels_of_shape[s]
            origin = region_origin[r]
            to_global = local_to_global[s]
            for c in range(channels):
                source_channel[c] = c
            if chan_offset[r] >= 0:
                base = chan_offset[r]
                for i in range(channels - 1, 0, -1):
                    j = (np.int64(own_words[base + channels - 1 - i]) * (i + 1)) >> 32
                    t = source_channel[i]
                    source_channel[i] = source_channel[j]
                    source_channel[j] = t
            for c in range(channels):
                for q in range(n):
                    arrangement[q] = q
                base = word_offset[c, r]
                for i in range(n - 1, 0, -1):
                    j = (np.int64(own_words[base + n - 1 - i]) * (i + 1)) >> 32
                    t = arrangement[i]
                    arrangement[i] = arrangement[j]
                    arrangement[j] = t
                plane = (b * channels + source_channel[c]) * pixels + origin
                for li in range(num_levels):
                    target = out[li, b, c]
                    if pixel_level[li]:  # 1-px blocks: the arrangement itself
                        for q in range(n):
                            target[origin + to_global[q]] = plane + to_global[arrangement[q]]
                        continue
                    groups, slot, offset = rep_group[li, s], seq_index[li, s], delta[li, s]
                    for g in range(4):
                        filled[g] = group_base[li, s, g]
                    for p in range(n):  # compaction: each group's block origins in arrangement order
                        q = arrangement[p]
                        g = groups[q]
                        if g >= 0:
                            sequence[filled[g]] = q
                            filled[g] += 1
                    for q in range(n):
                        target[origin + to_global[q]] = plane + to_global[sequence[slot[q]] + offset[q]]


@njit(parallel=True, cache=True, nogil=True)
def energies_kernel(values, src, width, region, reference, region_of_pixel, out):  # pragma: no cover - compiled
    """Integer gradient energy of every region of every source map: ``out[b, n, r]`` (int64), summed over
    channels. ``values`` is the flattened, quantised batch; ``src[n, b, c, p]`` indexes into it."""
    maps, batch, channels, pixels = src.shape
    height = pixels // width
    for job in prange(batch * maps):
        b = job // maps
        n = job % maps
        plane = np.empty(pixels, dtype=np.int64)
        acc = out[b, n]
        acc[:] = 0
        for c in range(channels):
            source = src[n, b, c]
            for p in range(pixels):
                plane[p] = values[source[p]]
            for y in range(height):
                row = y * width
                down_inside = y + 1 < height and (not reference or (y + 1) % region != 0)
                for x in range(width):
                    p = row + x
                    v = plane[p]
                    if x + 1 < width and (not reference or (x + 1) % region != 0):
                        d = plane[p + 1] - v
                    elif reference:  # the prototype's zero padding at a window's right edge
                        d = -v
                    else:
                        d = 0
                    e = d * d
                    if down_inside:
                        d = plane[p + width] - v
                    elif reference:
                        d = -v
                    else:
                        d = 0
                    acc[region_of_pixel[p]] += e + d * d


@njit(parallel=True, cache=True, nogil=True)
def select_kernel(src, levels, region_of_pixel, out):  # pragma: no cover - compiled
    """``out[b, c, p] = src[levels[b, region(p)], b, c, p]``: each region's sources at its chosen level."""
    batch, channels, pixels = out.shape
    for b in prange(batch):
        for c in range(channels):
            for p in range(pixels):
                out[b, c, p] = src[levels[b, region_of_pixel[p]], b, c, p]


@njit(parallel=True, cache=True, nogil=True)
def quantize_kernel(x, scale, limit, out):  # pragma: no cover - compiled
    """``out = round(x * scale)`` (half to even, in float64) in one pass; returns how many values are
    NaN, infinite or beyond ``limit`` in magnitude (those are not converted)."""
    bad = 0
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        if abs(v) <= limit:
            out[i] = np.int32(np.round(v * scale))
        else:
            out[i] = 0
            bad += 1
    return bad
