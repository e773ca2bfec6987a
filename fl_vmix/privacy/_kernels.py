"""Numba kernels of the CPU path (:mod:`fl_vmix.privacy.permutations`, :mod:`fl_vmix.privacy.region_energy`,
:class:`fl_vmix.privacy.mixer.VisualMixer`).

Each kernel computes the same integer function as its PyTorch twin (the path for other devices, and the
tests' oracle), in one compiled pass: the permutations (Fisher-Yates over a region's pixels from its PRF
words, then per level the compaction of each block group's top-left pixels), the integer region
energies, and the per-region level selection. :func:`mix_kernel` and :func:`shuffle_kernel` run a whole
mix per image while its data is in cache (their twin is the batch-wide path of ``VisualMixer.mix``).
Images run in parallel (``prange``); each writes only its own slice, so results do not depend on the
thread count. Compiled on first use and cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange


def use_torch_threads() -> None:
    """Run the kernels on as many threads as torch uses (e.g. one per simulated client), and leave torch's
    count as it was: the first call starts Numba's OpenMP layer, which sets the OpenMP thread count (torch's
    too) to all cores: a client on one thread would then train on all of them, and its floating-point results
    would differ between machines and between its first and later rounds."""
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@njit(parallel=True, cache=True, nogil=True)
def sources_kernel(words, tables, out):  # pragma: no cover - compiled; checked against the PyTorch twin
    """``out[l, b, c, p]``: the source of every output value at every level, as offsets into the whole
    flattened batch; ``tables`` as built by :meth:`ShuffleGeometry.kernel_tables`."""
    batch, channels, pixels = words.shape[0], out.shape[2], out.shape[3]
    for b in prange(batch):
        _image_sources(words[b], tables, b * channels * pixels, out[:, b])


@njit(cache=True, nogil=True)
def _image_sources(own_words, tables, start, out):  # pragma: no cover - compiled
    """One image's sources at every level, ``out[l, c, p] = start + (source offset in the image)``."""
    arrangements, source_channel = _arrangements(own_words, tables, out.shape[1])
    for li in range(out.shape[0]):
        _level_sources(tables, li, arrangements, source_channel, start, out[li])


@njit(cache=True, nogil=True)
def _arrangements(own_words, tables, channels):  # pragma: no cover - compiled
    """Per (channel, region) the Fisher-Yates arrangement of its units, ``[C, R, units]``, and per region
    the source of each channel, ``[R, C]`` (see :mod:`fl_vmix.privacy.permutations`). Every level of
    the image is made from these."""
    region_shape, units_of_shape, unit_offset = tables.region_shape, tables.units_of_shape, tables.unit_offset
    word_offset, chan_offset = tables.word_offset, tables.chan_offset
    regions = region_shape.shape[0]
    arrangements = np.empty((channels, regions, unit_offset.shape[1]), dtype=np.int32)
    source_channel = np.empty((regions, channels), dtype=np.int64)
    for r in range(regions):
        own_channels = source_channel[r]
        for c in range(channels):
            own_channels[c] = c
        if chan_offset[r] >= 0:
            _fisher_yates(own_words, chan_offset[r], channels, tables.chan_spares, own_channels)
        shape = region_shape[r]
        units = units_of_shape[shape]
        for c in range(channels):
            arrangement = arrangements[c, r]
            for q in range(units):
                arrangement[q] = q
            _fisher_yates(own_words, word_offset[c, r], units, tables.spares_of_shape[shape], arrangement)
    return arrangements, source_channel


@njit(cache=True, nogil=True)
def _fisher_yates(own_words, base, n, spares, arrangement):  # pragma: no cover - compiled
    """Shuffle ``arrangement[:n]`` in place from the row of words at ``base``: ``n - 1`` draws, then ``spares``
    spare words that replace rejected draws (the rule of :func:`fl_vmix.privacy.permutations.accepted_draws`)."""
    spare, end = base + n - 1, base + n - 1 + spares
    for i in range(n - 1, 0, -1):
        k = np.int64(i + 1)
        m = np.int64(own_words[base + n - 1 - i]) * k
        if (m & 0xFFFFFFFF) < k:  # possibly rejected: only then is 2^32 mod k needed
            threshold = np.int64(4294967296) % k
            while (m & 0xFFFFFFFF) < threshold and spare < end:
                m = np.int64(own_words[spare]) * k
                spare += 1
        j = m >> 32
        t = arrangement[i]
        arrangement[i] = arrangement[j]
        arrangement[j] = t


@njit(cache=True, nogil=True)
def _level_sources(tables, li, arrangements, source_channel, start, out):  # pragma: no cover - compiled
    """One image's sources at level ``li`` of ``tables``, ``out[c, p] = start + (source offset in the
    image)``: per (channel, region) the compaction of each block group's origins in arrangement order."""
    region_origin, region_shape, width = tables.region_origin, tables.region_shape, tables.width
    shape_height, shape_width, units_of_shape = tables.shape_height, tables.shape_width, tables.units_of_shape
    unit_offset, pixel_level, single_group = tables.unit_offset, tables.pixel_level, tables.single_group
    rep_group, seq_index, step, group_base = tables.rep_group, tables.seq_index, tables.step, tables.group_base
    channels, pixels = out.shape
    sequence = np.empty(unit_offset.shape[1], dtype=np.int64)
    filled = np.empty(4, dtype=np.int64)
    for r in range(region_origin.shape[0]):
        s = region_shape[r]
        h, w, units = shape_height[s], shape_width[s], units_of_shape[s]
        offsets = unit_offset[s]
        origin = region_origin[r]
        groups, slot, offset = rep_group[li, s], seq_index[li, s], step[li, s]
        for c in range(channels):
            arrangement = arrangements[c, r]
            plane = start + source_channel[r, c] * pixels + origin
            target = out[c]
            if pixel_level[li]:  # 1-px blocks (and units): the arrangement itself
                for y in range(h):
                    row, q0 = origin + y * width, y * w
                    for x in range(w):
                        target[row + x] = plane + offsets[arrangement[q0 + x]]
                continue
            if single_group[li, s]:  # all blocks of one shape: a plain compaction, without branches
                k = 0
                for p in range(units):
                    q = arrangement[p]
                    sequence[k] = offsets[q]
                    k += groups[q] >= 0
            else:
                for g in range(4):
                    filled[g] = group_base[li, s, g]
                for p in range(units):  # compaction: each group's block origins in arrangement order
                    q = arrangement[p]
                    g = groups[q]
                    if g >= 0:
                        sequence[filled[g]] = offsets[q]
                        filled[g] += 1
            for y in range(h):
                row, q0 = origin + y * width, y * w
                for x in range(w):
                    target[row + x] = plane + sequence[slot[q0 + x]] + offset[q0 + x]


# Rows of a band are summed per column in float64 before they reach the int64 region totals: the loops
# then run over whole rows (vectorised) instead of region-wide segments. Exact: values are integers with
# |v| <= 4 * 65535 < 2**18, so a squared difference is below 2**38, a pixel adds at most two (< 2**39),
# and a column of at most _BAND_ROWS rows stays below 2**51 < 2**53, where float64 holds every integer.
_BAND_ROWS = 4096


@njit(cache=True, nogil=True)
def _add_plane_energy(plane, width, region, reference, acc):  # pragma: no cover - compiled
    """Add one channel plane's integer gradient energy to its regions' totals ``acc[r]``.

    The right neighbour of a region's last column and the row below a region's last row depend on the
    definition: 'corrected' takes the real neighbour (nothing past the image), 'reference' the
    prototype's zero padding (a term ``v**2``) at every region border."""
    height = plane.shape[0] // width
    columns = (width + region - 1) // region
    band = np.zeros(width, dtype=np.float64)  # the current band's energy, per column
    keep = np.ones(width, dtype=np.float64)  # 0 where the right neighbour is zero padding
    if reference:
        for x in range(region - 1, width, region):
            keep[x] = 0.0
    for y in range(height):
        row = y * width
        for x in range(width - 1):
            d = keep[x] * np.float64(plane[row + x + 1]) - np.float64(plane[row + x])
            band[x] += d * d
        if reference:  # the image's last column: zero padding too ('corrected': nothing)
            v = np.float64(plane[row + width - 1])
            band[width - 1] += v * v
        if y + 1 < height:
            below = 0.0 if reference and (y + 1) % region == 0 else 1.0
            for x in range(width):
                d = below * np.float64(plane[row + width + x]) - np.float64(plane[row + x])
                band[x] += d * d
        elif reference:
            for x in range(width):
                v = np.float64(plane[row + x])
                band[x] += v * v
        if (y + 1) % region == 0 or y + 1 == height or (y + 1) % _BAND_ROWS == 0:
            base = (y // region) * columns
            for rx in range(columns):
                total = np.int64(0)
                for x in range(rx * region, min(rx * region + region, width)):
                    total += np.int64(band[x])
                    band[x] = 0.0
                acc[base + rx] += total


@njit(parallel=True, cache=True, nogil=True)
def energies_kernel(values, src, width, region, reference, out):  # pragma: no cover - compiled
    """Integer gradient energy of every region of every source map: ``out[b, n, r]`` (int64), summed over
    channels. ``values`` is the flattened, quantised batch; ``src[n, b, c, p]`` indexes into it."""
    maps, batch, channels, pixels = src.shape
    for job in prange(batch * maps):
        b = job // maps
        n = job % maps
        plane = np.empty(pixels, dtype=np.int64)
        out[b, n, :] = 0
        for c in range(channels):
            source = src[n, b, c]
            for p in range(pixels):
                plane[p] = values[source[p]]
            _add_plane_energy(plane, width, region, reference, out[b, n])


@njit(cache=True, nogil=True)
def _gather_selected(values, src, levels, b, c, width, region, target):  # pragma: no cover - compiled
    """``target[p] = values[src[levels[b, region(p)], b, c, p]]`` for one plane, one region-wide row segment
    at a time (each segment reads one level's sources)."""
    pixels = target.shape[0]
    height = pixels // width
    columns = (width + region - 1) // region
    for y in range(height):
        row = y * width
        base = (y // region) * columns
        for rx in range(columns):
            source = src[levels[b, base + rx], b, c]
            for p in range(row + rx * region, row + min(rx * region + region, width)):
                target[p] = values[source[p]]


@njit(parallel=True, cache=True, nogil=True)
def selected_energies_kernel(values, src, levels, width, region, reference, out):  # pragma: no cover - compiled
    """Like :func:`energies_kernel` for the one source map made of each region's sources at its level
    (``levels[b, r]``), without materialising that map: ``out[b, r]``."""
    _, batch, channels, pixels = src.shape
    for b in prange(batch):
        plane = np.empty(pixels, dtype=np.int64)
        out[b, :] = 0
        for c in range(channels):
            _gather_selected(values, src, levels, b, c, width, region, plane)
            _add_plane_energy(plane, width, region, reference, out[b])


@njit(parallel=True, cache=True, nogil=True)
def select_take_kernel(images, src, levels, width, region, out):  # pragma: no cover - compiled
    """``out[b, c, p] = images[src[levels[b, region(p)], b, c, p]]``: the batch shuffled with each
    region at its chosen level (``images`` flattened, any dtype)."""
    _, batch, channels, _ = src.shape
    for b in prange(batch):
        for c in range(channels):
            _gather_selected(images, src, levels, b, c, width, region, out[b, c])


@njit(parallel=True, cache=True, nogil=True)
def shuffle_kernel(words, tables, images, out):  # pragma: no cover - compiled
    """Fixed mode: ``out[b, c, p] = images[b, source]`` at the one level of ``tables``. Each image's sources
    live in a small scratch buffer while it is taken, so no batch-wide source map is written or read.
    ``images`` ``[B, C * P]`` and ``out`` ``[B, C, P]`` hold the values' bits (a gather moves bits)."""
    batch, channels, pixels = out.shape
    for b in prange(batch):
        source = np.empty((1, channels, pixels), dtype=np.int32)
        _image_sources(words[b], tables, 0, source)
        image, target = images[b], out[b]
        for c in range(channels):
            own, plane = source[0, c], target[c]
            for p in range(pixels):
                plane[p] = image[own[p]]


@njit(cache=True, nogil=True)
def _first_reaching(predicted, shift, target):  # pragma: no cover - compiled
    """First state whose predicted energy plus ``shift`` reaches the target (the last one if none)."""
    for k in range(predicted.shape[0]):
        if predicted[k] + shift >= target:
            return k
    return predicted.shape[0] - 1


@njit(cache=True, nogil=True)
def _select_segments(planes, level, width, region, target):  # pragma: no cover - compiled
    """``target[p] = planes[level[region(p)], p]``, one region-wide row segment at a time."""
    pixels = target.shape[0]
    columns = (width + region - 1) // region
    for y in range(pixels // width):
        row = y * width
        base = (y // region) * columns
        for rx in range(columns):
            plane = planes[level[base + rx]]
            for p in range(row + rx * region, row + min(rx * region + region, width)):
                target[p] = plane[p]


@njit(parallel=True, cache=True, nogil=True)
def mix_kernel(
    words,
    tables,
    data,
    scale,
    limit,
    images,
    width,
    region,
    reference,
    ratio,
    absolute,
    max_refinements,
    out,
    levels_out,
    clear_out,
    target_out,
    achieved_out,
):  # pragma: no cover - compiled; checked against the mixer's PyTorch path in the tests
    """The whole targeted shuffle of each image in one pass while its data is in cache: clear and per-level
    region energies, the refinement-state selection and its corrections, and the take. The same integer
    function, step for step, as the PyTorch path of :meth:`VisualMixer.mix` (the twin on other devices).

    ``data`` ``[B, C * P]`` is quantised here, per image, as :func:`quantize_kernel` does (``scale`` 257 and
    ``limit`` inf read uint8; 1 and inf take values quantised before), so no batch-wide copy is made;
    returns how many values are out of range (the outputs are then not to be used). ``images``
    ``[B, C * P]`` holds the batch's bits; ``out`` ``[B, C, P]`` receives the shuffled bits. The target is
    ``ceil(clear total * ratio)`` when ``ratio >= 0``, else ``ceil(absolute)``. Regions are refined by
    clear energy, highest first (ties by index, as the stable descending sort of the PyTorch path)."""
    batch, channels, pixels = out.shape
    num_levels, regions = tables.pixel_level.shape[0], levels_out.shape[1]
    bad = 0
    for b in prange(batch):
        own, image = np.empty(channels * pixels, dtype=np.int32), images[b]
        bad += _quantize(data[b], scale, limit, own)
        arrangements, source_channel = _arrangements(words[b], tables, channels)
        source = np.empty((num_levels, channels, pixels), dtype=np.int32)
        level_values = np.empty((num_levels, channels, pixels), dtype=np.int32)
        energy = np.zeros((num_levels, regions), dtype=np.int64)
        clear = np.zeros(regions, dtype=np.int64)
        for c in range(channels):
            _add_plane_energy(own[c * pixels : (c + 1) * pixels], width, region, reference, clear)
        total = clear.sum()
        target = np.int64(np.ceil(np.float64(total) * ratio)) if ratio >= 0 else np.int64(np.ceil(absolute))
        level = np.zeros(regions, dtype=np.int64)
        # Levels are measured when needed: state 0 (every region coarsest) has exactly the coarsest level's
        # energy, so when that reaches the target it is the first state that does, and it is kept.
        _measure_level(
            tables, 0, arrangements, source_channel, own, width, region, reference, source, level_values, energy
        )
        achieved = energy[0].sum()
        if achieved < target:
            for li in range(1, num_levels):
                _measure_level(
                    tables,
                    li,
                    arrangements,
                    source_channel,
                    own,
                    width,
                    region,
                    reference,
                    source,
                    level_values,
                    energy,
                )
            achieved = _select(energy, level_values, clear, target, width, region, reference, max_refinements, level)
        target_plane = out[b]
        selected = np.empty(pixels, dtype=np.int32)
        for c in range(channels):
            _select_segments(source[:, c], level, width, region, selected)
            plane = target_plane[c]
            for p in range(pixels):
                plane[p] = image[selected[p]]
        levels_out[b] = level
        clear_out[b] = total
        target_out[b] = target
        achieved_out[b] = achieved
    return bad


@njit(cache=True, nogil=True)
def _quantize(x, scale, limit, out):  # pragma: no cover - compiled
    """``out = round(x * scale)`` (half to even, in float64); returns how many values are NaN, infinite or
    beyond ``limit`` in magnitude (those are not converted)."""
    bad = 0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        if abs(v) <= limit:
            out[i] = np.int32(np.round(v * scale))
        else:
            out[i] = 0
            bad += 1
    return bad


@njit(cache=True, nogil=True)
def _measure_level(
    tables, li, arrangements, source_channel, own, width, region, reference, source, level_values, energy
):  # pragma: no cover - compiled
    """Level ``li`` of one image: its sources, its quantised values and their region energies."""
    _level_sources(tables, li, arrangements, source_channel, 0, source[li])
    for c in range(source.shape[1]):
        moved, plane = source[li, c], level_values[li, c]
        for p in range(plane.shape[0]):
            plane[p] = own[moved[p]]
        _add_plane_energy(plane, width, region, reference, energy[li])


@njit(cache=True, nogil=True)
def _select(
    energy, level_values, clear, target, width, region, reference, max_refinements, level
):  # pragma: no cover - compiled
    """The refinement of :meth:`VisualMixer.mix` for one image: the first state whose predicted energy
    reaches the target, then corrections from the measured energy. Fills ``level``; returns the energy."""
    num_levels, regions = energy.shape
    channels, pixels = level_values.shape[1], level_values.shape[2]
    states = regions * num_levels
    order = np.argsort(-clear, kind="mergesort")  # energies are >= 0: negating is exact
    # Energy of state t = rank i * L + level j (higher ranks finest, lower ranks coarsest).
    predicted = np.empty(states, dtype=np.int64)
    after = energy[0].sum()
    before = np.int64(0)
    for i in range(regions):
        r = order[i]
        after -= energy[0, r]
        for j in range(num_levels):
            predicted[i * num_levels + j] = before + after + energy[j, r]
        before += energy[num_levels - 1, r]
    state = _first_reaching(predicted, 0, target)
    per_region = np.empty(regions, dtype=np.int64)
    selected = np.empty(pixels, dtype=np.int32)
    achieved = np.int64(0)
    for step in range(max_refinements + 1):
        rank_now, level_now = state // num_levels, state % num_levels
        for i in range(regions):
            level[order[i]] = num_levels - 1 if i < rank_now else (level_now if i == rank_now else 0)
        uniform = True
        for r in range(regions):
            uniform = uniform and level[r] == level[0]
        achieved = 0
        if uniform:  # one level everywhere: that level's own map
            achieved = energy[level[0]].sum()
        elif reference:  # regions do not interact (window = region): the sum of their own energies
            for r in range(regions):
                achieved += energy[level[r], r]
        else:
            per_region[:] = 0
            for c in range(channels):
                _select_segments(level_values[:, c], level, width, region, selected)
                _add_plane_energy(selected, width, region, reference, per_region)
            achieved = per_region.sum()
        if step == max_refinements or not (achieved < target and state < states - 1):
            break
        # 'corrected' regions interact through shared borders: shift the prediction by the observed
        # error and move at least one step further.
        shifted = _first_reaching(predicted, achieved - predicted[state], target)
        state = min(max(shifted, state + 1), states - 1)
    return achieved


@njit(parallel=True, cache=True, nogil=True)
def quantize_kernel(x, scale, limit, out):  # pragma: no cover - compiled
    """``out = round(x * scale)`` (half to even, in float64) in one pass; returns how many values are
    NaN, infinite or beyond ``limit`` in magnitude (those are not converted)."""
    step = 1 << 16  # chunks of work for the threads
    bad = 0
    for k in prange((x.shape[0] + step - 1) // step):
        bad += _quantize(x[k * step : (k + 1) * step], scale, limit, out[k * step : (k + 1) * step])
    return bad
