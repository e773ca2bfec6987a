"""Fresh, uniform, keyed block permutations for every (image, epoch, channel, region).

From the PRF words of one sample (:class:`fl_vmix.privacy.keyed.KeyedPRF`) this module builds, for
each channel and region, the source of every output pixel at every block size (level). Nothing is
shared: each (key, sample id, epoch, channel, region) draws its own words, so two images, channels or
regions get independent permutations by construction.

Construction and argument (also in ``docs/threat_model.md``):

1. **Master arrangement.** Regions are tiled by units of ``u x u`` pixels, ``u`` the greatest common
   divisor of the block sizes (1 for the default (2, 1); 2 for (8, 4, 2)), so every block of every level
   starts at a unit. For each (channel, region) of ``n`` units, a Fisher-Yates shuffle of ``0..n-1``:
   for ``i = n-1, ..., 1`` swap positions ``i`` and ``j = floor(w * k / 2^32)``, ``k = i + 1``, with the
   next 32-bit PRF word ``w`` that is accepted: ``w`` is rejected when ``(w * k) mod 2^32 < 2^32 mod k``
   (Lemire 2019), and the next of the row's spare words is drawn instead. Every ``j`` then has exactly
   ``floor(2^32 / k)`` accepted words, so each draw is exactly uniform and the arrangement is a uniform
   permutation at every size (plain multiply-shift, without rejection, is biased: a total-variation
   distance of about ``n^2 / (12 * 2^32)`` from uniform, 0.049 at 50,176 units). Each row keeps
   :func:`spare_words` ``(n)`` spare words, enough that it runs out with probability below ``2^-64``;
   should it, the last word drawn is used as is, so the arrangement stays within ``2^-64`` of uniform.
2. **Block levels by compaction.** At block size ``b`` the blocks of a region fall into shape groups
   (full, right edge, bottom edge, corner); blocks only trade places inside their group. Reading the
   master arrangement in order and keeping the units where a group's blocks start gives that group's
   block order. For a uniform arrangement, the relative order of any fixed subset is uniform, and the
   orders of disjoint subsets are independent, so every group gets a uniform block permutation, all
   groups independently. Levels of one region share its master arrangement, which is safe because one
   (image, channel, region) is published at exactly one level.
3. **Channels.** With ``permute_channels`` each region also gets a Fisher-Yates permutation of its
   channel order from its own words.

Two implementations of the same construction: a Numba kernel (the CPU path, one pass per region in
compiled code) and a vectorised PyTorch one (any device; the CPU/CUDA bit-identity rests on both
computing the same integer function of the same PRF words, which the tests check against each other).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, cached_property
from typing import NamedTuple

import numpy as np
import torch

NUM_GROUPS = 4  # block shape groups: 0 corner, 1 bottom edge, 2 right edge, 3 full (full_h * 2 + full_w)


WORD = 1 << 32  # the PRF's words are 32-bit
_SPARE_FAILURE_BITS = 64  # a row runs out of spare words with probability below 2**-64


@cache
def spare_words(n: int) -> int:
    """How many spare words a Fisher-Yates shuffle of ``n`` items keeps for rejected draws.

    The draw for ``k`` items is rejected with probability ``(2^32 mod k) / 2^32 < n / 2^32 = q``, so the
    number of rejections ``R`` of a row is at most a sum of ``n - 1`` geometric counts of failure
    probability ``q``, and by Chernoff ``P(R > s) <= ((1 - q) / (1 - q z))^(n-1) / z^(s+1)`` for every
    ``1 < z < 1 / q``. The smallest ``s`` that brings this below ``2^-64`` for some ``z`` on a fine grid:
    3 for 64 items, 18 for 50,176 (against 63 and 50,175 draws)."""
    if n <= 2:
        return 0  # k = 2 divides 2^32: never rejected
    q = n / WORD
    best = math.inf
    for step in range(1, 4 * 32):
        z = 2.0 ** (step / 4)
        if q * z >= 1.0:
            break
        exponent = (n - 1) * (math.log1p(-q) - math.log1p(-q * z)) + _SPARE_FAILURE_BITS * math.log(2.0)
        best = min(best, exponent / math.log(z))
    return max(0, math.ceil(best) - 1)


class KernelTables(NamedTuple):
    """What the Numba kernels read of a geometry for a set of levels (a named tuple: Numba passes it as one
    argument and reads its fields by name). Per region: ``region_origin`` (offset of its top-left pixel in
    the image), ``region_shape`` (index into the per-shape tables). Per shape: ``shape_height``,
    ``shape_width``, ``units_of_shape`` and ``unit_offset`` (each unit's origin as an image offset from the
    region's). Per selected level: ``pixel_level`` (1-px blocks), and per shape ``single_group``,
    ``rep_group``, ``seq_index``, ``step`` (each pixel's offset from its block's origin), ``group_base``.
    ``word_offset`` / ``chan_offset``: where each (channel, region)'s and each region's channel
    permutation's PRF words start (draws, then spare words); ``spares_of_shape`` / ``chan_spares``: how many
    spare words each row keeps; ``width``: the image width."""

    region_origin: np.ndarray
    region_shape: np.ndarray
    shape_height: np.ndarray
    shape_width: np.ndarray
    units_of_shape: np.ndarray
    unit_offset: np.ndarray
    pixel_level: np.ndarray
    single_group: np.ndarray
    rep_group: np.ndarray
    seq_index: np.ndarray
    step: np.ndarray
    group_base: np.ndarray
    word_offset: np.ndarray
    chan_offset: np.ndarray
    spares_of_shape: np.ndarray
    chan_spares: int
    width: int


@dataclass(frozen=True)
class ShuffleGeometry:
    """Public geometry of a shuffle: regions, blocks and the layout of one sample's PRF words.

    Tables are indexed ``[level, shape, local pixel]`` (local pixels row-major inside a region;
    padded to the largest region). Levels follow ``block_sizes`` (coarsest first, as in the mixer).
    """

    height: int
    width: int
    channels: int
    region: int
    block_sizes: tuple[int, ...]
    permute_channels: bool

    @cached_property
    def grid(self) -> tuple[int, int]:
        return -(-self.height // self.region), -(-self.width // self.region)

    @property
    def num_regions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @cached_property
    def _regions(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        ny, nx = self.grid
        ry, rx = np.divmod(np.arange(ny * nx), nx)
        heights = np.minimum(self.region, self.height - ry * self.region)
        widths = np.minimum(self.region, self.width - rx * self.region)
        shapes = sorted(set(zip(heights.tolist(), widths.tolist())))
        shape_id = np.array([shapes.index((h, w)) for h, w in zip(heights.tolist(), widths.tolist())], dtype=np.int64)
        origin = (ry * self.region * self.width + rx * self.region).astype(np.int64)
        return origin, shape_id, shapes

    @property
    def region_origin(self) -> np.ndarray:
        """``[R]`` flat index of each region's top-left pixel."""
        return self._regions[0]

    @property
    def region_shape(self) -> np.ndarray:
        """``[R]`` index into :attr:`shapes` of each region."""
        return self._regions[1]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return self._regions[2]

    @cached_property
    def region_of_pixel(self) -> np.ndarray:
        """``[H * W]`` region index of each pixel (row-major)."""
        ry = np.arange(self.height)[:, None] // self.region
        rx = np.arange(self.width)[None, :] // self.region
        return (ry * self.grid[1] + rx).reshape(-1).astype(np.int64)

    @cached_property
    def pixels_of_shape(self) -> np.ndarray:
        return np.array([h * w for h, w in self.shapes], dtype=np.int64)

    @property
    def unit(self) -> int:
        """Side of the units the master arrangement shuffles: the gcd of the block sizes."""
        return math.gcd(*self.block_sizes)

    @cached_property
    def units_of_shape(self) -> np.ndarray:
        u = self.unit
        return np.array([-(-h // u) * -(-w // u) for h, w in self.shapes], dtype=np.int64)

    @cached_property
    def unit_origin(self) -> np.ndarray:
        """``[S, units_max]``: local pixel index of each unit's top-left pixel."""
        u = self.unit
        table = np.zeros((len(self.shapes), int(self.units_of_shape.max())), dtype=np.int64)
        for s, (_, w) in enumerate(self.shapes):
            uy, ux = np.divmod(np.arange(int(self.units_of_shape[s])), -(-w // u))
            table[s, : len(uy)] = uy * u * w + ux * u
        return table

    @cached_property
    def local_to_global(self) -> np.ndarray:
        """``[S, n_max]``: flat image offset (from the region origin) of each local pixel."""
        table = np.zeros((len(self.shapes), int(self.pixels_of_shape.max())), dtype=np.int64)
        for s, (h, w) in enumerate(self.shapes):
            y, x = np.divmod(np.arange(h * w), w)
            table[s, : h * w] = y * self.width + x
        return table

    @cached_property
    def _block_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For every (level, shape): rep_group (per unit: the shape group of the block starting there, or
        -1), seq_index and delta (per pixel: the slot of its block among the compacted block origins, and
        its offset from the block's origin), group_base (first slot of each group)."""
        levels, shapes, n_max = len(self.block_sizes), len(self.shapes), int(self.pixels_of_shape.max())
        rep_group = np.full((levels, shapes, int(self.units_of_shape.max())), -1, dtype=np.int8)
        seq_index = np.zeros((levels, shapes, n_max), dtype=np.int32)
        delta = np.zeros((levels, shapes, n_max), dtype=np.int32)
        group_base = np.zeros((levels, shapes, NUM_GROUPS), dtype=np.int32)
        for level, block in enumerate(self.block_sizes):
            for s, (h, w) in enumerate(self.shapes):
                y, x = np.divmod(np.arange(h * w), w)
                by, bx = y // block * block, x // block * block  # each pixel's block origin
                full_h = (h - by) >= block
                full_w = (w - bx) >= block
                group = full_h.astype(np.int64) * 2 + full_w.astype(np.int64)
                origin_local = by * w + bx
                is_rep = origin_local == np.arange(h * w)
                counts = np.bincount(group[is_rep], minlength=NUM_GROUPS)
                base = np.concatenate([[0], np.cumsum(counts)[:-1]])
                # rank of each block among its group's blocks, in row-major block order
                rank_of_rep = np.zeros(h * w, dtype=np.int64)
                for g in range(NUM_GROUPS):
                    reps = np.flatnonzero(is_rep & (group == g))
                    rank_of_rep[reps] = np.arange(len(reps))
                units = self.unit_origin[s, : int(self.units_of_shape[s])]
                rep_group[level, s, : len(units)] = np.where(is_rep[units], group[units], -1)
                seq_index[level, s, : h * w] = base[group] + rank_of_rep[origin_local]
                delta[level, s, : h * w] = np.arange(h * w) - origin_local
                group_base[level, s] = base
        return rep_group, seq_index, delta, group_base

    @cached_property
    def spares_of_shape(self) -> np.ndarray:
        """``[S]`` spare words of each region shape's Fisher-Yates rows (:func:`spare_words`)."""
        return np.array([spare_words(int(n)) for n in self.units_of_shape], dtype=np.int64)

    @property
    def chan_spares(self) -> int:
        return spare_words(self.channels)

    @cached_property
    def _word_layout(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Word offsets: Fisher-Yates words of each (channel, region), then of each region's channels; each
        row is its draws followed by its spare words."""
        need = self.units_of_shape[self.region_shape] - 1 + self.spares_of_shape[self.region_shape]  # [R]
        per_channel = int(need.sum())
        starts = np.concatenate([[0], np.cumsum(need)[:-1]]).astype(np.int64)
        word_offset = starts[None, :] + per_channel * np.arange(self.channels, dtype=np.int64)[:, None]
        total = per_channel * self.channels
        chan_offset = np.full(self.num_regions, -1, dtype=np.int64)
        if self.permute_channels and self.channels > 1:
            row = self.channels - 1 + self.chan_spares
            chan_offset = total + row * np.arange(self.num_regions, dtype=np.int64)
            total += row * self.num_regions
        return word_offset, chan_offset, total

    @property
    def words_per_sample(self) -> int:
        return self._word_layout[2]

    @cached_property
    def _kernel_tables(self) -> dict[tuple[int, ...], KernelTables]:
        return {}

    def kernel_tables(self, levels: tuple[int, ...]) -> KernelTables:
        """The tables the Numba kernels read for the given levels, built once per geometry and levels
        (the kernels run per batch, these small tables would otherwise be sliced every call)."""
        if levels not in self._kernel_tables:
            rep_group, seq_index, delta, group_base = self._block_tables
            word_offset, chan_offset, _ = self._word_layout
            selected = np.asarray(levels, dtype=np.int64)
            pixel_level = np.array([self.block_sizes[level] == 1 for level in levels], dtype=np.bool_)  # unit 1 then
            groups = rep_group[selected]
            single_group = np.array([[len(set(g[g >= 0].tolist())) <= 1 for g in per_level] for per_level in groups])
            # In image offsets: each unit's origin, and each pixel's offset from its block's origin (a block
            # never leaves its region's rows), so the kernel adds instead of converting local positions.
            widths = np.array([w for _, w in self.shapes], dtype=np.int64).reshape(1, -1, 1)
            step = delta[selected] // widths * self.width + delta[selected] % widths
            unit_offset = np.take_along_axis(self.local_to_global, self.unit_origin, axis=1)
            self._kernel_tables[levels] = KernelTables(
                region_origin=self.region_origin,
                region_shape=self.region_shape,
                shape_height=np.array([h for h, _ in self.shapes], dtype=np.int64),
                shape_width=widths.reshape(-1),
                units_of_shape=self.units_of_shape,
                unit_offset=unit_offset,
                pixel_level=pixel_level,
                single_group=single_group,
                rep_group=groups,
                seq_index=seq_index[selected],
                step=step.astype(np.int32),
                group_base=group_base[selected],
                word_offset=word_offset,
                chan_offset=chan_offset,
                spares_of_shape=self.spares_of_shape,
                chan_spares=self.chan_spares,
                width=self.width,
            )
        return self._kernel_tables[levels]


def draw_is_accepted(words: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Lemire's rule for a draw from ``k`` items: word ``w`` (int64, 32 bits) gives ``floor(w k / 2^32)`` and is
    accepted when ``(w k) mod 2^32 >= 2^32 mod k``; then every index has exactly ``floor(2^32 / k)`` words."""
    return (words * k) % WORD >= WORD % k


def accepted_draws(words: torch.Tensor, n: int) -> torch.Tensor:
    """``[rows, n-1]`` the accepted word of each Fisher-Yates step from ``[rows, n-1+s]`` words (the draws of
    steps ``k = n, ..., 2``, then ``s`` spare words): a rejected draw takes the row's next spare word, and
    the next after that while rejected; a row out of spares keeps its last word (see the module docstring)."""
    draws = words[:, : n - 1]
    rejected = ~draw_is_accepted(draws, torch.arange(n, 1, -1, device=words.device))
    if not bool(rejected.any()):  # the rule, for almost every batch: rejections are rare
        return draws
    draws, host = draws.clone(), words.cpu()
    for row in torch.unique(torch.nonzero(rejected)[:, 0]).tolist():  # the few rows with a rejection
        spare, end = n - 1, words.shape[1]
        for step in torch.nonzero(rejected[row]).view(-1).tolist():
            size, word = n - step, int(host[row, step])
            while (word * size) % WORD < WORD % size and spare < end:
                word, spare = int(host[row, spare]), spare + 1
            draws[row, step] = word
    return draws


def fisher_yates_torch(words: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of uniform arrangements of ``0..n-1`` from ``[rows, n-1+s]`` 32-bit words (int64): the draws, then
    ``s`` spare words for rejected draws (:func:`accepted_draws`), vectorised over rows."""
    rows = words.shape[0]
    draws = accepted_draws(words, n)
    arr = torch.arange(n, device=words.device).expand(rows, n).clone()
    for k, i in enumerate(range(n - 1, 0, -1)):
        j = ((draws[:, k] * (i + 1)) >> 32).view(-1, 1)
        current = arr[:, i].clone()
        arr[:, i] = arr.gather(1, j).view(-1)
        arr.scatter_(1, j, current.view(-1, 1))
    return arr


def sources(geometry: ShuffleGeometry, words: np.ndarray, levels: list[int], device: torch.device) -> torch.Tensor:
    """Source of every output value, per requested level: int32 ``[len(levels), B, C, H * W]`` offsets
    into the flattened ``[B, C, H, W]`` batch. CPU: the Numba kernel; other devices: PyTorch."""
    batch = words.shape[0]
    if batch * geometry.channels * geometry.pixels >= 2**31:
        raise ValueError(
            f"a batch of {batch} x {geometry.channels} x {geometry.pixels} values is too large for int32 "
            "indices: split it into smaller batches"
        )
    if device.type == "cpu":
        return _sources_numba(geometry, words, levels)
    return _sources_torch(geometry, torch.from_numpy(words.astype(np.int64)).to(device), levels)


def _sources_numba(geometry: ShuffleGeometry, words: np.ndarray, levels: list[int]) -> torch.Tensor:
    from fl_vmix.privacy._kernels import sources_kernel, use_torch_threads  # Numba: imported on first CPU use

    use_torch_threads()
    out = np.empty((len(levels), words.shape[0], geometry.channels, geometry.pixels), dtype=np.int32)
    sources_kernel(np.ascontiguousarray(words), geometry.kernel_tables(tuple(levels)), out)
    return torch.from_numpy(out)


def _sources_torch(geometry: ShuffleGeometry, words: torch.Tensor, levels: list[int]) -> torch.Tensor:
    device, batch = words.device, words.shape[0]
    channels, pixels, regions = geometry.channels, geometry.pixels, geometry.num_regions
    rep_group, seq_index, delta, _ = (torch.from_numpy(t.astype(np.int64)).to(device) for t in geometry._block_tables)
    word_offset, chan_offset, _ = (torch.as_tensor(t, device=device) for t in geometry._word_layout)
    origin = torch.from_numpy(geometry.region_origin).to(device)
    local_to_global = torch.from_numpy(geometry.local_to_global).to(device)
    region_shape = torch.from_numpy(geometry.region_shape).to(device)

    source_channel = torch.arange(channels, device=device).expand(batch, regions, channels)
    if geometry.permute_channels and channels > 1:
        row = channels - 1 + geometry.chan_spares
        index = chan_offset.view(-1, 1) + torch.arange(row, device=device)  # [R, C-1+spares]
        source_channel = fisher_yates_torch(words[:, index].reshape(batch * regions, row), channels)
        source_channel = source_channel.view(batch, regions, channels)

    out = torch.empty(len(levels), batch, channels, pixels, dtype=torch.int32, device=device)
    image = torch.arange(batch, device=device).view(-1, 1, 1)
    unit_origin = torch.from_numpy(geometry.unit_origin).to(device)
    for s, (h, w) in enumerate(geometry.shapes):
        n, units = h * w, int(geometry.units_of_shape[s])
        members = torch.nonzero(region_shape == s).view(-1)  # regions of this shape
        row = units - 1 + int(geometry.spares_of_shape[s])
        index = word_offset[:, members].unsqueeze(-1) + torch.arange(row, device=device)  # [C, R_s, row]
        rows = batch * channels * len(members)
        arrangement = fisher_yates_torch(words[:, index].reshape(rows, row), units)  # [B*C*R_s, units]
        to_global = local_to_global[s, :n]
        plane = (image * channels + source_channel[:, members].transpose(1, 2)) * pixels + origin[
            members
        ]  # [B, C, R_s]
        outputs = (origin[members].view(-1, 1) + to_global).view(-1)  # output pixels of these regions
        for li, level in enumerate(levels):
            rep = rep_group[level, s, :units][arrangement]
            # Reps in arrangement order, grouped by shape group (stable), as the kernel's compaction does.
            order = torch.sort(torch.where(rep >= 0, rep, NUM_GROUPS), dim=1, stable=True).indices
            compacted = unit_origin[s, arrangement.gather(1, order)]
            source_local = compacted[:, seq_index[level, s, :n]] + delta[level, s, :n]
            value = plane.unsqueeze(-1) + to_global[source_local].view(batch, channels, len(members), n)
            out[li][:, :, outputs] = value.reshape(batch, channels, -1).to(torch.int32)
    return out
