"""VisualMixer: keyed, invertible, VFE-targeted pixel shuffling inside image regions.

An image is cut into ``region_size`` regions (tiling from the top-left; regions at the right/bottom
edge are smaller when the size is not a multiple). Each region of each channel is cut into
``block x block`` blocks and the blocks are permuted, every channel with its own permutation (the
spatial *and* chromatic shuffle); blocks only trade places with blocks of the same shape, so no pixel
leaves its region and none is dropped or duplicated. Optionally the channel order of each region is
permuted too.

Granularity follows a target VFE (the paper's privacy knob). Candidate block sizes form levels, from
coarsest (level 0) to finest. Regions are ranked by importance (their local VFE, or a learnable
attention score) and refined in that order, each region reaching the finest level before the next
one moves, until the image's VFE reaches the target (absolute, or a multiple of the clear image's
VFE). When even the finest setting everywhere misses, that setting is used and the report says so.

The shape follows Kornia augmentations: :meth:`VisualMixer.plan` samples the parameters (a
:class:`MixParams`), :meth:`VisualMixer.apply` applies them, and parameters can be replayed. The
permutations themselves are a pure function of (secret key, sample id, epoch in ``dynamic`` mode),
computed with counter-based hashing (:mod:`fl_vmix.privacy.keyed`): no global RNG is touched, runs
and devices agree, and the key holder inverts exactly with :meth:`VisualMixer.invert`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from fl_vmix.privacy.keyed import derive_seed, hash_fields, region_permutation_bank, uniform_below
from fl_vmix.privacy.vfe import VFE_METHODS, VFEMethod, pixel_energy, window_sums

logger = logging.getLogger("fl_vmix.privacy")

SUPPORTED_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
_STREAM_PICK, _STREAM_CHANNELS, _STREAM_BANK = 1, 2, 3


@dataclass(frozen=True)
class MixParams:
    """Everything besides the key needed to replay or invert one batch's shuffle."""

    sample_ids: torch.Tensor  # [B] int64
    epoch: int
    levels: torch.Tensor  # [B, R] int64: index into block_sizes (0 = coarsest) for each region


@dataclass(frozen=True)
class MixReport:
    """How the batch met its VFE target (all tensors ``[B]``, on the images' device)."""

    clear_vfe: torch.Tensor
    target_vfe: torch.Tensor | None
    achieved_vfe: torch.Tensor
    reached: torch.Tensor  # bool; False where even the finest setting stays below the target

    @property
    def num_unreached(self) -> int:
        return int((~self.reached).sum())


@dataclass(frozen=True)
class MixResult:
    images: torch.Tensor
    params: MixParams
    report: MixReport


class _Layout:
    """Geometry of an ``H x W`` image cut into regions, and the key's permutation table for it.

    Index arithmetic runs in int32: CPUs without AVX-512 have no vector multiply for int64.
    """

    def __init__(self, height: int, width: int, region: int, device: torch.device) -> None:
        self.height, self.width, self.region = height, width, region
        self.grid = (-(-height // region), -(-width // region))
        self.num_regions = self.grid[0] * self.grid[1]
        self.pixels = height * width
        self.uniform = height % region == 0 and width % region == 0
        y = torch.arange(height).view(-1, 1).expand(height, width)
        x = torch.arange(width).view(1, -1).expand(height, width)
        ry, rx = y // region, x // region
        region_h = torch.clamp(height - ry * region, max=region)
        region_w = torch.clamp(width - rx * region, max=region)
        # Regions of the same shape share a bank; shapes are few (full, right, bottom, corner).
        self.shapes = sorted({(int(h), int(w)) for h, w in zip(region_h.flatten().tolist(), region_w.flatten().tolist())})
        shape_id = torch.zeros(height, width, dtype=torch.long)
        for index, (h, w) in enumerate(self.shapes):
            shape_id[(region_h == h) & (region_w == w)] = index
        self.shape_of_pixel = shape_id.flatten()
        self.local_of_pixel = ((y - ry * region) * region_w + (x - rx * region)).flatten()
        self.region_of_pixel = (ry * self.grid[1] + rx).flatten().to(device)
        self.origin_of_pixel = (ry * region * width + rx * region).flatten().to(device=device, dtype=torch.int32)
        self.pixels_of_shape = torch.tensor([h * w for h, w in self.shapes])
        self.device = device

    def per_pixel(self, per_region: torch.Tensor) -> torch.Tensor:
        """Broadcast ``[..., R]`` values to ``[..., H * W]`` (each pixel takes its region's value)."""
        if self.uniform:
            (ny, nx), r = self.grid, self.region
            lead = per_region.shape[:-1]
            return per_region.view(*lead, ny, 1, nx, 1).expand(*lead, ny, r, nx, r).reshape(*lead, self.pixels)
        return per_region.index_select(-1, self.region_of_pixel)


class VisualMixer(nn.Module):
    """Keyed VisualMixer shuffle. ``mixer(images, sample_ids)`` returns obfuscated images.

    Args:
        key: the client's secret (str, bytes or int). It never leaves the object.
        region_size: side of a region in pixels; pixels never leave their region.
        block_sizes: candidate block sides in pixels, any order (sorted coarsest first). A block equal
            to ``region_size`` leaves a region unshuffled.
        target_vfe: absolute VFE target (needs the images' scale: uint8 is read as 0-1).
        target_ratio: target as a multiple (>= 1) of each clear image's VFE. Give at most one target;
            with none, every region uses the finest block size (a uniform block shuffle).
        vfe_method: VFE definition the target refers to (window = ``region_size``).
        mode: ``"static"`` (shuffle depends on key and id) or ``"dynamic"`` (also on the epoch).
        permute_channels: also permute the channel order of each region.
        attention: optional module ``[B, C, H, W] -> [B, rows, cols]`` scoring region importance;
            it receives gradient through a straight-through estimate of the refinement.
        bank_size: keyed permutations per region shape and block size to pick from.
        max_refinements: extra refinement steps when a definition whose regions interact
            (``corrected``) falls just short of the target after the exact per-region prediction.
    """

    def __init__(
        self,
        key: str | bytes | int,
        region_size: int = 8,
        block_sizes: Sequence[int] = (2, 1),
        target_vfe: float | None = None,
        target_ratio: float | None = 4.0,
        vfe_method: VFEMethod = "corrected",
        mode: Literal["static", "dynamic"] = "static",
        permute_channels: bool = False,
        attention: nn.Module | None = None,
        bank_size: int = 4096,
        max_refinements: int = 8,
        attention_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self._seed = derive_seed(key)
        if isinstance(region_size, bool) or not isinstance(region_size, int) or region_size < 1:
            raise ValueError(f"region_size must be a positive int (pixels), got {region_size!r}")
        sizes = list(block_sizes)
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= region_size for b in sizes):
            raise ValueError(
                f"block_sizes must be ints between 1 and region_size={region_size}, got {block_sizes!r}: "
                "e.g. (4, 2, 1) for 8-pixel regions"
            )
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"block_sizes has repeated values {block_sizes!r}: list each candidate once")
        if target_vfe is not None and target_ratio is not None:
            raise ValueError("give target_vfe (absolute) or target_ratio (relative), not both: set the other to None")
        if target_ratio is not None and not (np.isfinite(target_ratio) and target_ratio >= 1.0):
            raise ValueError(
                f"target_ratio must be >= 1 (a multiple of the clear image's VFE), got {target_ratio}: "
                "shuffling never needs to lower VFE; use 1.0 for the coarsest shuffle"
            )
        if target_vfe is not None and not (np.isfinite(target_vfe) and target_vfe > 0):
            raise ValueError(f"target_vfe must be a positive finite number, got {target_vfe}")
        if vfe_method not in VFE_METHODS:
            raise ValueError(f"unknown vfe_method {vfe_method!r}: use one of {', '.join(VFE_METHODS)}")
        if mode not in ("static", "dynamic"):
            raise ValueError(f"mode must be 'static' or 'dynamic', got {mode!r}")
        if isinstance(bank_size, bool) or not isinstance(bank_size, int) or bank_size < 1:
            raise ValueError(f"bank_size must be a positive int, got {bank_size!r}")
        self.region_size = region_size
        self.block_sizes = tuple(sorted(sizes, reverse=True))
        self.target_vfe = target_vfe
        self.target_ratio = target_ratio
        self.vfe_method: VFEMethod = vfe_method
        self.mode = mode
        self.permute_channels = permute_channels
        self.attention = attention
        self.bank_size = bank_size
        self.max_refinements = max_refinements
        self.attention_temperature = attention_temperature
        self.epoch = 0
        self.last_params: MixParams | None = None
        self.last_report: MixReport | None = None
        self._layouts: dict[tuple[int, int, str], _Layout] = {}

    def extra_repr(self) -> str:
        target = (
            f"target_vfe={self.target_vfe}" if self.target_vfe is not None
            else f"target_ratio={self.target_ratio}" if self.target_ratio is not None else "fixed finest"
        )
        return (
            f"region_size={self.region_size}, block_sizes={self.block_sizes}, {target}, "
            f"vfe_method={self.vfe_method!r}, mode={self.mode!r}, permute_channels={self.permute_channels}"
        )

    @property
    def targeted(self) -> bool:
        return self.target_vfe is not None or self.target_ratio is not None

    def set_epoch(self, epoch: int) -> None:
        """Default epoch for ``dynamic`` mode (e.g. set by the training loop each epoch)."""
        self.epoch = int(epoch)

    # ----------------------------------------------------------------------------------- validation
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(
                f"images must have shape [B, C, H, W], got {images.dim()} dims {tuple(images.shape)}: "
                "batch a single image with .unsqueeze(0) or use mixer.as_transform()"
            )
        if images.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"unsupported dtype {images.dtype}: use uint8 or a float dtype")
        batch, channels, height, width = images.shape
        if batch == 0:
            raise ValueError("empty batch: images has 0 samples; pass at least one image")
        if channels < 1:
            raise ValueError("images have 0 channels: expected 1 (grey) or 3 (RGB)")
        if height < self.region_size or width < self.region_size:
            raise ValueError(
                f"image {height}x{width} is smaller than one region ({self.region_size} px): "
                f"use region_size <= {min(height, width)}"
            )
        # A sum is finite iff every value is (barring overflow, rechecked exactly): one cheap pass.
        if images.is_floating_point() and not bool(torch.isfinite(images.sum(dtype=torch.float64))) and not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or inf: clean or clamp the input before mixing")

    @staticmethod
    def _check_ids(sample_ids: object, batch: int, device: torch.device) -> torch.Tensor:
        if isinstance(sample_ids, torch.Tensor):
            ids = sample_ids
        elif isinstance(sample_ids, np.ndarray):
            if not np.issubdtype(sample_ids.dtype, np.integer):
                raise ValueError(f"sample_ids must be integers, got numpy dtype {sample_ids.dtype}")
            ids = torch.from_numpy(sample_ids.astype(np.int64))
        elif isinstance(sample_ids, (list, tuple)):
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in sample_ids):
                raise ValueError("sample_ids must be a sequence of ints (one id per image)")
            ids = torch.tensor(list(sample_ids), dtype=torch.int64)
        elif isinstance(sample_ids, (int, np.integer)) and not isinstance(sample_ids, bool):
            ids = torch.tensor([int(sample_ids)], dtype=torch.int64)
        else:
            raise ValueError(f"sample_ids must be a tensor, array or list of ints, got {type(sample_ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"sample_ids must have an integer dtype, got {ids.dtype}: use .long()")
        if ids.dim() != 1 or ids.numel() != batch:
            raise ValueError(f"sample_ids must be 1-D with one id per image ({batch}), got shape {tuple(ids.shape)}")
        return ids.to(device=device, dtype=torch.int64)

    def _epoch(self, epoch: int | None) -> int:
        if self.mode == "static":
            return 0
        return self.epoch if epoch is None else int(epoch)

    # ------------------------------------------------------------------------------ keyed indices
    def _layout(self, height: int, width: int, device: torch.device) -> _Layout:
        """Geometry plus this key's table: entry ``[level, shape_base + member * pixels + local]`` is
        the source offset (in image-width pixel units, from the region's origin) of a region pixel."""
        cache_key = (height, width, str(device))
        if cache_key not in self._layouts:
            layout = _Layout(height, width, self.region_size, device)
            rows = []
            for block in self.block_sizes:
                parts = []
                for h, w in layout.shapes:
                    bank = region_permutation_bank(self._seed, h, w, block, self.bank_size, _STREAM_BANK)
                    parts.append((bank[:, 0] * width + bank[:, 1]).flatten())
                rows.append(torch.cat(parts))
            table = torch.stack(rows)
            if table.numel() >= 2**31 or height * width * 8 >= 2**31:
                raise ValueError(f"image {height}x{width} with bank_size={self.bank_size} is too large for int32 indices: lower bank_size")
            counts = layout.pixels_of_shape * self.bank_size
            shape_base = torch.cumsum(counts, 0) - counts
            layout.table = table.to(device=device, dtype=torch.int32)
            layout.pixels_of_pixel = layout.pixels_of_shape[layout.shape_of_pixel].to(device=device, dtype=torch.int32)
            layout.base_of_pixel = (shape_base[layout.shape_of_pixel] + layout.local_of_pixel).to(device=device, dtype=torch.int32)
            self._layouts[cache_key] = layout
        return self._layouts[cache_key]

    def _sources(self, layout: _Layout, ids: torch.Tensor, epoch: int, channels: int, levels: slice = slice(None)) -> torch.Tensor:
        """Source of every output value as an int32 offset into the whole flattened batch, per level:
        ``[L, B, C, H * W]`` (``index_select`` takes int32 indices; ``gather`` would need int64)."""
        device = ids.device
        batch = ids.numel()
        channel = torch.arange(channels, device=device).view(1, -1, 1)
        region = torch.arange(layout.num_regions, device=device).view(1, 1, -1)
        picks = uniform_below(
            hash_fields(self._seed, _STREAM_PICK, ids.view(-1, 1, 1), epoch, channel, region, device=device),
            self.bank_size,
        ).to(torch.int32)  # [B, C, R]: which bank member each region of each channel uses
        slot = torch.addcmul(layout.base_of_pixel, layout.per_pixel(picks), layout.pixels_of_pixel)
        table = layout.table[levels]
        source = table.index_select(1, slot.view(-1)).view(table.shape[0], batch, channels, layout.pixels)
        image_start = (torch.arange(batch, device=device, dtype=torch.int32) * (channels * layout.pixels)).view(-1, 1, 1)
        if self.permute_channels and channels > 1:
            noise = hash_fields(self._seed, _STREAM_CHANNELS, ids.view(-1, 1, 1), epoch, region.view(1, -1, 1), channel.view(1, 1, -1), device=device)
            source_channel = torch.argsort(noise, dim=2, stable=True).transpose(1, 2).to(torch.int32)  # [B, C, R]
            plane = layout.per_pixel(source_channel) * layout.pixels
        else:
            plane = (channel * layout.pixels).to(torch.int32)
        source += (layout.origin_of_pixel + plane) + image_start
        return source

    @staticmethod
    def _take(values: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``values.flatten()[source]`` shaped like ``source``."""
        return values.reshape(-1).index_select(0, source.reshape(-1)).view(source.shape)

    @staticmethod
    def _select_levels(per_level: torch.Tensor, level_of_pixel: torch.Tensor) -> torch.Tensor:
        """From ``[L, B, C, P]`` pick each pixel's level (``[B, 1, P]``): a few cheap passes, L is small."""
        out = per_level[0]
        for level in range(1, per_level.shape[0]):
            out = torch.where(level_of_pixel == level, per_level[level], out)
        return out

    # --------------------------------------------------------------------------------- selection
    def _float(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0) if images.dtype == torch.uint8 else images

    def _region_energy(self, images: torch.Tensor) -> torch.Tensor:
        """Per-region VFE ``[N, R]`` of float images (window = region size)."""
        energy = window_sums(pixel_energy(images, self.region_size, self.vfe_method), self.region_size)
        return energy.mean(dim=1).flatten(1)

    @staticmethod
    def _first_state_reaching(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Index of the first refinement state whose VFE reaches the target (the last one if none)."""
        meets = predicted >= target.unsqueeze(1)
        return torch.where(meets.any(1), meets.to(torch.int8).argmax(1), predicted.shape[1] - 1)

    def _levels_from_state(self, state: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Region levels for refinement state ``t = rank * L + level`` (regions ranked by importance)."""
        num_levels = len(self.block_sizes)
        rank_now, level_now = (state // num_levels).view(-1, 1), (state % num_levels).view(-1, 1)
        ranks = torch.arange(order.shape[1], device=order.device).view(1, -1)
        by_rank = torch.where(ranks < rank_now, num_levels - 1, torch.where(ranks == rank_now, level_now, 0))
        return torch.empty_like(by_rank).scatter_(1, order, by_rank)

    # ---------------------------------------------------------------------------------- public API
    def plan(self, images: torch.Tensor, sample_ids: object, epoch: int | None = None) -> MixParams:
        """Sample the shuffle parameters for a batch (the level of every region)."""
        return self.mix(images, sample_ids, epoch).params

    def mix(self, images: torch.Tensor, sample_ids: object, epoch: int | None = None) -> MixResult:
        """Obfuscate a batch and return the images with their parameters and VFE report."""
        self._check_images(images)
        batch, channels, height, width = images.shape
        ids = self._check_ids(sample_ids, batch, images.device)
        epoch = self._epoch(epoch)
        layout = self._layout(height, width, images.device)
        clear = self._float(images)
        clear_region = self._region_energy(clear)
        clear_vfe = clear_region.mean(1)
        num_levels = len(self.block_sizes)

        if not self.targeted:
            levels = torch.full((batch, layout.num_regions), num_levels - 1, device=images.device)
            mixed = self._take(images, self._sources(layout, ids, epoch, channels, slice(-1, None))[0]).view_as(images)
            achieved = self._region_energy(self._float(mixed)).mean(1)
            report = MixReport(clear_vfe, None, achieved, torch.ones(batch, dtype=torch.bool, device=images.device))
            return self._finish(mixed, MixParams(ids, epoch, levels), report)

        target = clear_vfe * self.target_ratio if self.target_ratio is not None else torch.full_like(clear_vfe, self.target_vfe)
        sources = self._sources(layout, ids, epoch, channels)  # [L, B, C, P]
        shuffled = self._take(clear, sources)  # the batch with every region at each level
        energy = self._region_energy(shuffled.view(num_levels * batch, channels, height, width))
        energy = energy.view(num_levels, batch, -1).transpose(0, 1)  # [B, L, R]
        scores = self.attention(clear).flatten(1) if self.attention is not None else clear_region
        order = torch.argsort(scores.detach(), dim=1, descending=True, stable=True)
        ranked = energy.gather(2, order.unsqueeze(1).expand_as(energy))
        finest, coarsest = ranked[:, -1], ranked[:, 0]
        before = torch.cumsum(finest, 1) - finest
        after = coarsest.sum(1, keepdim=True) - torch.cumsum(coarsest, 1)
        # VFE of state (rank i at level j, higher ranks finest, lower ranks coarsest), exact when
        # regions do not interact ('reference' with window = region).
        predicted = ((before + after).unsqueeze(2) + ranked.transpose(1, 2)).flatten(1) / layout.num_regions
        last_state = predicted.shape[1] - 1
        state = self._first_state_reaching(predicted, target)
        for _ in range(self.max_refinements + 1):
            levels = self._levels_from_state(state, order)
            level_of_pixel = layout.per_pixel(levels).unsqueeze(1)
            float_mixed = self._select_levels(shuffled, level_of_pixel)
            achieved = self._region_energy(float_mixed.view_as(clear)).mean(1)
            short = (achieved < target) & (state < last_state)
            if not bool(short.any()):
                break
            # 'corrected' regions interact through shared borders: shift the per-region prediction by
            # the observed error and move at least one step further.
            error = achieved - predicted.gather(1, state.view(-1, 1)).squeeze(1)
            shifted = torch.maximum(self._first_state_reaching(predicted + error.unsqueeze(1), target), state + 1)
            state = torch.where(short, shifted.clamp(max=last_state), state)

        if images.dtype == torch.uint8:
            mixed = self._take(images, self._select_levels(sources, level_of_pixel)).view_as(images)
        else:
            mixed = float_mixed.view_as(images)
        if self.attention is not None and torch.is_grad_enabled():
            mixed = self._straight_through(mixed, shuffled[0].view_as(clear), shuffled[-1].view_as(clear), scores, order, state, layout)
        report = MixReport(clear_vfe, target, achieved, achieved >= target * (1 - 1e-6))
        if report.num_unreached:
            logger.warning(
                "VisualMixer: %d of %d images stay below the target VFE with the finest setting "
                "(block %d everywhere); raise it with smaller block_sizes or a lower target",
                report.num_unreached, batch, self.block_sizes[-1],
            )
        return self._finish(mixed, MixParams(ids, epoch, levels), report)

    def _straight_through(self, mixed, coarse, fine, scores, order, state, layout) -> torch.Tensor:
        """Forward value stays the hard shuffle; gradient reaches the scorer through a soft
        refinement probability per region, sigmoid((score - score at the refinement frontier) / T)."""
        frontier_rank = (state // len(self.block_sizes)).clamp(max=order.shape[1] - 1)
        frontier = scores.detach().gather(1, order.gather(1, frontier_rank.view(-1, 1)))
        refine = torch.sigmoid((scores - frontier) / self.attention_temperature)  # [B, R]
        weight = layout.per_pixel(refine).view(scores.shape[0], 1, layout.height, layout.width)
        soft = coarse + weight * (fine - coarse)
        return mixed + (soft - soft.detach()).to(mixed.dtype)

    def _finish(self, mixed: torch.Tensor, params: MixParams, report: MixReport) -> MixResult:
        self.last_params, self.last_report = params, report
        return MixResult(mixed, params, report)

    def apply(self, images: torch.Tensor, params: MixParams) -> torch.Tensor:
        """Replay a shuffle: apply the parameters of :meth:`plan` (or a previous call) to images."""
        return self._replay(images, params, invert=False)

    def forward(self, images: torch.Tensor, sample_ids: object, epoch: int | None = None) -> torch.Tensor:
        return self.mix(images, sample_ids, epoch).images

    def invert(self, obfuscated: torch.Tensor, sample_ids: object, epoch: int | None = None, params: MixParams | None = None) -> torch.Tensor:
        """Exact inverse for the key holder.

        With a VFE target the level of each region depends on the clear image, so the parameters
        are needed: pass ``params`` (from :meth:`mix`/:meth:`plan`); the mixer's last call is used
        when its ids match. Without a target the key and ids suffice.
        """
        self._check_images(obfuscated)
        ids = self._check_ids(sample_ids, obfuscated.shape[0], obfuscated.device)
        if params is None:
            if not self.targeted:
                regions = self._layout(*obfuscated.shape[-2:], obfuscated.device).num_regions
                levels = torch.full((ids.numel(), regions), len(self.block_sizes) - 1, device=obfuscated.device)
                params = MixParams(ids, self._epoch(epoch), levels)
            elif self.last_params is not None and torch.equal(self.last_params.sample_ids, ids) and (epoch is None or self._epoch(epoch) == self.last_params.epoch):
                params = self.last_params
            else:
                raise ValueError(
                    "invert needs the MixParams of these images: with a VFE target each region's block size "
                    "depends on the clear image; pass params=result.params from mixer.mix(...) (or mixer.plan)"
                )
        elif not torch.equal(params.sample_ids.to(ids.device), ids):
            raise ValueError("params were planned for other sample_ids: pass the ids the images were mixed with")
        return self._replay(obfuscated, params, invert=True)

    def _replay(self, images: torch.Tensor, params: MixParams, invert: bool) -> torch.Tensor:
        self._check_images(images)
        batch, channels, height, width = images.shape
        layout = self._layout(height, width, images.device)
        if params.levels.shape != (batch, layout.num_regions):
            raise ValueError(
                f"params hold levels for {tuple(params.levels.shape)} (images x regions) but the images need "
                f"{(batch, layout.num_regions)}: replay params only on the batch they were planned for"
            )
        sources = self._sources(layout, params.sample_ids.to(images.device), params.epoch, channels)
        source = self._select_levels(sources, layout.per_pixel(params.levels.to(images.device)).unsqueeze(1))
        if invert:
            out = torch.empty_like(images).view(-1).index_copy_(0, source.reshape(-1).long(), images.reshape(-1))
            return out.view_as(images)
        return self._take(images, source).view_as(images)

    def as_transform(self) -> "VisualMixerTransform":
        """A single-image transform for ``torchvision.transforms.v2`` pipelines."""
        return VisualMixerTransform(self)


class VisualMixerTransform(nn.Module):
    """Wraps a :class:`VisualMixer` for ``v2.Compose``: call the pipeline as ``pipeline(image, sample_id)``;
    other v2 transforms pass the integer id through untouched and this one returns ``(mixed, sample_id)``."""

    def __init__(self, mixer: VisualMixer) -> None:
        super().__init__()
        self.mixer = mixer

    def forward(self, image: torch.Tensor, sample_id: int) -> tuple[torch.Tensor, int]:
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise ValueError(
                f"VisualMixerTransform takes one [C, H, W] tensor image, got {getattr(image, 'shape', type(image))}: "
                "put v2.ToImage() before it, or call the VisualMixer itself on batches"
            )
        mixed = self.mixer(image.unsqueeze(0), [int(sample_id)])[0]
        return (image.__class__(mixed) if type(image) is not torch.Tensor else mixed), sample_id
