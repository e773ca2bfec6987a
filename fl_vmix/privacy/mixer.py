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

As in Kornia augmentations, sampled parameters are replayable: :meth:`VisualMixer.mix` returns the
parameters it chose (a :class:`MixParams`, the level of every region) with the images, and
:meth:`VisualMixer.replay` replays them (named so as not to shadow ``nn.Module.apply``). The
permutations themselves are a pure function of (secret key, public settings, image shape, sample id,
epoch in ``dynamic`` mode): every (image, epoch, channel, region) gets a fresh uniform permutation from
a keyed cryptographic PRF (:mod:`fl_vmix.privacy.keyed`, :mod:`fl_vmix.privacy.permutations`). No
global RNG is touched, a sample's shuffle does not depend on its batch, CPU and CUDA agree bit for bit
(the level choice uses exact integer energies, :mod:`fl_vmix.privacy.region_energy`), and the key holder
inverts exactly with :meth:`VisualMixer.invert`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from torch import nn

from fl_vmix.privacy.keyed import KeyedPRF, check_dataset, check_key, check_sample_ids, context_bytes
from fl_vmix.privacy.permutations import ShuffleGeometry, sources
from fl_vmix.privacy.region_energy import (
    MAX_ABS,
    SCALE,
    UINT8_STEP,
    identity_sources,
    quantize,
    region_energies,
    select_sources,
    selected_energies,
    take_selected,
)
from fl_vmix.privacy.vfe import VFE_METHODS, VFEMethod

SUPPORTED_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class MixParams:
    """Everything besides the key needed to replay or invert one batch's shuffle."""

    sample_ids: torch.Tensor  # [B] int64
    epoch: int
    levels: torch.Tensor  # [B, R] int64: index into block_sizes (0 = coarsest) for each region
    dataset: str | None = None  # the public name of the data the ids index (part of the keyed context)


@dataclass(frozen=True)
class MixReport:
    """How the batch met its VFE target (all tensors ``[B]``, on the images' device).

    ``clear_vfe`` and ``achieved_vfe`` are measured when first read: targeting measures them anyway,
    while a fixed block shuffle (no target) then costs only the shuffle."""

    target_vfe: torch.Tensor | None
    reached: torch.Tensor  # bool; False where even the finest setting stays below the target
    measure: Callable[[], tuple[torch.Tensor, torch.Tensor]] = field(repr=False, compare=False)

    @cached_property
    def _measured(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.measure()

    @property
    def clear_vfe(self) -> torch.Tensor:
        return self._measured[0]

    @property
    def achieved_vfe(self) -> torch.Tensor:
        return self._measured[1]

    @property
    def num_unreached(self) -> int:
        return int((~self.reached).sum())


@dataclass(frozen=True)
class MixResult:
    images: torch.Tensor
    params: MixParams
    report: MixReport


class _Layout:
    """An ``H x W x C`` image cut into regions: the public shuffle geometry and this key's PRF for it."""

    def __init__(self, geometry: ShuffleGeometry, prf: KeyedPRF, device: torch.device, dataset: str | None) -> None:
        self.geometry, self.prf, self.device, self.dataset = geometry, prf, device, dataset
        height, width, region = geometry.height, geometry.width, geometry.region
        self.height, self.width, self.region = height, width, region
        self.grid = geometry.grid
        self.num_regions = geometry.num_regions
        self.pixels = geometry.pixels
        self.uniform = height % region == 0 and width % region == 0
        ry = torch.arange(height).view(-1, 1) // region
        rx = torch.arange(width).view(1, -1) // region
        self.region_of_pixel = (ry * self.grid[1] + rx).flatten().to(device)

    def per_pixel(self, per_region: torch.Tensor) -> torch.Tensor:
        """Broadcast ``[..., R]`` values to ``[..., H * W]`` (each pixel takes its region's value)."""
        if self.uniform:
            (ny, nx), r = self.grid, self.region
            lead = per_region.shape[:-1]
            return per_region.view(*lead, ny, 1, nx, 1).expand(*lead, ny, r, nx, r).reshape(*lead, self.pixels)
        return per_region.index_select(-1, self.region_of_pixel)


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images' bits as integers (contiguous) and an empty output of that type: the compiled shuffles
    only move values, so one kernel per element size serves every dtype, bit for bit."""
    bits = images.detach().contiguous().view(_BITS[images.element_size()])
    return bits, torch.empty_like(bits)


class VisualMixer(nn.Module):
    """Keyed VisualMixer shuffle. ``mixer(images, sample_ids)`` returns obfuscated images.

    Args:
        key: the client's secret, 16-64 random bytes (e.g. ``secrets.token_bytes(32)``). It never
            leaves the object; every permutation comes from a PRF of it (:mod:`fl_vmix.privacy.keyed`).
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
        max_refinements: extra refinement steps when a definition whose regions interact
            (``corrected``) falls just short of the target after the exact per-region prediction.
    """

    compiled_cpu = True  # the one-pass CPU kernels; the tests switch them off to compare with the torch path

    def __init__(
        self,
        key: bytes | None = None,
        region_size: int = 8,
        block_sizes: Sequence[int] = (2, 1),
        target_vfe: float | None = None,
        target_ratio: float | None = 4.0,
        vfe_method: VFEMethod = "corrected",
        mode: Literal["static", "dynamic"] = "static",
        permute_channels: bool = False,
        attention: nn.Module | None = None,
        max_refinements: int = 8,
        attention_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self._key = check_key(key)
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
        if not isinstance(permute_channels, (bool, np.bool_)):
            raise ValueError(
                f"permute_channels must be True or False, got {permute_channels!r}: a string such as 'no' "
                "would read as True; pass a bool"
            )
        if (
            isinstance(max_refinements, bool)
            or not isinstance(max_refinements, (int, np.integer))
            or max_refinements < 0
        ):
            raise ValueError(f"max_refinements must be an int >= 0 (extra refinement steps), got {max_refinements!r}")
        if (
            isinstance(attention_temperature, bool)
            or not isinstance(attention_temperature, (int, float, np.number))
            or not (math.isfinite(attention_temperature) and attention_temperature > 0)
        ):
            raise ValueError(
                f"attention_temperature must be a positive finite number (it divides the score gaps), got "
                f"{attention_temperature!r}: use e.g. 1.0"
            )
        if attention is not None and not isinstance(attention, nn.Module):
            raise ValueError(f"attention must be an nn.Module scoring regions or None, got {type(attention).__name__}")
        self.region_size = region_size
        self.block_sizes = tuple(sorted(sizes, reverse=True))
        self.target_vfe = target_vfe
        self.target_ratio = target_ratio
        self.vfe_method: VFEMethod = vfe_method
        self.mode = mode
        self.permute_channels = bool(permute_channels)
        self.attention = attention
        self.max_refinements = int(max_refinements)
        self.attention_temperature = float(attention_temperature)
        self.last_params: MixParams | None = None
        self.last_report: MixReport | None = None
        self._layouts: dict[tuple[int, int, int, str, str | None], _Layout] = {}

    def extra_repr(self) -> str:
        target = (
            f"target_vfe={self.target_vfe}"
            if self.target_vfe is not None
            else f"target_ratio={self.target_ratio}"
            if self.target_ratio is not None
            else "fixed finest"
        )
        return (
            f"region_size={self.region_size}, block_sizes={self.block_sizes}, {target}, "
            f"vfe_method={self.vfe_method!r}, mode={self.mode!r}, permute_channels={self.permute_channels}"
        )

    @property
    def targeted(self) -> bool:
        return self.target_vfe is not None or self.target_ratio is not None

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
        # NaN, inf and out-of-range values are refused by the quantisation of mix (one pass).

    @staticmethod
    def _check_ids(sample_ids: object, batch: int, device: torch.device) -> torch.Tensor:
        if isinstance(sample_ids, torch.Tensor) and (
            sample_ids.dtype.is_floating_point or sample_ids.dtype.is_complex or sample_ids.dtype == torch.bool
        ):
            raise ValueError(f"sample_ids must have an integer dtype, got {sample_ids.dtype}: use .long()")
        if isinstance(sample_ids, np.ndarray) and not np.issubdtype(sample_ids.dtype, np.integer):
            raise ValueError(f"sample_ids must be integers, got numpy dtype {sample_ids.dtype}: use .astype(np.int64)")
        if (isinstance(sample_ids, (torch.Tensor, np.ndarray)) and sample_ids.ndim != 1) or (
            isinstance(sample_ids, (torch.Tensor, np.ndarray, list, tuple)) and len(sample_ids) != batch
        ):
            shape = tuple(sample_ids.shape) if isinstance(sample_ids, (torch.Tensor, np.ndarray)) else len(sample_ids)
            raise ValueError(f"sample_ids must be 1-D with one id per image ({batch}), got shape {shape}")
        ids = torch.from_numpy(check_sample_ids(sample_ids))  # the id domain, and no id twice
        if ids.numel() != batch:
            raise ValueError(f"sample_ids must be 1-D with one id per image ({batch}), got {ids.numel()} ids")
        return ids.to(device=device)

    def _epoch(self, epoch: object) -> int:
        if epoch is not None and (
            isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= int(epoch) < 2**32
        ):
            raise ValueError(f"epoch must be an int in [0, 2**32) or None, got {epoch!r}: pass the current epoch")
        if self.mode == "static":
            return 0  # a static shuffle is the same every epoch
        if epoch is None:
            raise ValueError("dynamic mode shuffles differently every epoch: pass epoch=<current epoch>")
        return int(epoch)

    # ------------------------------------------------------------------------------ keyed indices
    def context(self, height: int, width: int, channels: int, dataset: str | None = None) -> bytes:
        """The public context of this mixer's subkey for one image shape and dataset: every setting that
        can change an output (the shuffle geometry, and the target, VFE definition, refinement and scorer
        that pick each region's level), the image shape and the data the ids index. Two mixers that differ
        in any of them, or one mixer on two shapes or datasets, never share key-derived numbers."""
        attention = None if self.attention is None else type(self.attention).__qualname__
        return context_bytes(
            "visualmixer.shuffle.v3",
            self.region_size,
            self.block_sizes,
            self.permute_channels,
            self.mode,
            None if self.target_vfe is None else float(self.target_vfe),
            None if self.target_ratio is None else float(self.target_ratio),
            self.vfe_method,
            self.max_refinements,
            attention,
            self.attention_temperature,
            dataset,
            channels,
            height,
            width,
        )

    def _layout(
        self, height: int, width: int, channels: int, device: torch.device, dataset: str | None = None
    ) -> _Layout:
        """Geometry and PRF for one image shape and dataset (the subkey binds :meth:`context`)."""
        cache_key = (height, width, channels, str(device), dataset)
        if cache_key not in self._layouts:
            geometry = ShuffleGeometry(
                height, width, channels, self.region_size, self.block_sizes, self.permute_channels
            )
            prf = KeyedPRF(self._key, self.context(height, width, channels, dataset))
            self._layouts[cache_key] = _Layout(geometry, prf, device, dataset)
        return self._layouts[cache_key]

    def _sources(self, layout: _Layout, ids: torch.Tensor, epoch: int, levels: list[int] | None = None) -> torch.Tensor:
        """Source of every output value as an int32 offset into the whole flattened batch, per level:
        ``[L, B, C, H * W]`` (``index_select`` takes int32 indices; ``gather`` would need int64)."""
        words = layout.prf.words(ids, epoch, layout.geometry.words_per_sample)
        chosen = list(range(len(self.block_sizes))) if levels is None else levels
        return sources(layout.geometry, words, chosen, ids.device)

    @staticmethod
    def _take(values: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``values.flatten()[source]`` shaped like ``source``."""
        return values.reshape(-1).index_select(0, source.reshape(-1)).view(source.shape)

    # --------------------------------------------------------------------------------- selection
    def _energies(self, values: torch.Tensor, source_maps: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """Exact integer energy ``[B, N, R]`` of every region under each source map (window = region)."""
        return region_energies(values, source_maps, layout.geometry, reference=self.vfe_method == "reference")

    def _to_vfe(self, totals: torch.Tensor, layout: _Layout, channels: int) -> torch.Tensor:
        """Integer energy totals ``[B]`` as VFE (mean window energy over windows and channels, 0-1 scale)."""
        return (totals.double() / (channels * layout.num_regions * float(SCALE) ** 2)).float()

    def _absolute_total(self, layout: _Layout, channels: int) -> float:
        """``target_vfe`` as an energy total (0 without one)."""
        return float(self.target_vfe or 0.0) * channels * layout.num_regions * float(SCALE) ** 2

    def _target_totals(self, clear_totals: torch.Tensor, layout: _Layout, channels: int) -> torch.Tensor:
        """The target as an integer energy total: an image reaches it when its total is at least this."""
        if self.target_ratio is not None:
            target = clear_totals.double() * self.target_ratio
        else:
            target = torch.full_like(clear_totals, self._absolute_total(layout, channels), dtype=torch.float64)
        return torch.ceil(target).to(torch.int64)

    @staticmethod
    def _first_state_reaching(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Index of the first refinement state whose energy reaches the target (the last one if none)."""
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
    def mix(
        self, images: torch.Tensor, sample_ids: object, epoch: int | None = None, dataset: str | None = None
    ) -> MixResult:
        """Obfuscate a batch and return the images with their parameters and VFE report.

        ``dataset``: the public name of the data the ids index (name, split and a content fingerprint, as
        ``fl_vmix.data.client.DatasetIdentity.token`` gives it). It is part of the keyed context, so the
        same id in two datasets or splits gets unrelated permutations; callers that mix images of more than
        one dataset under one key must name them."""
        self._check_images(images)
        batch, channels, height, width = images.shape
        ids = self._check_ids(sample_ids, batch, images.device)
        epoch = self._epoch(epoch)
        dataset = check_dataset(dataset)
        # Without a target nothing quantises the images (which refuses NaN and inf): check here, by one sum
        # (NaN and inf propagate through it) and only on suspicion by the exact test (a huge sum may overflow).
        if (
            not self.targeted
            and images.is_floating_point()
            and not bool(torch.isfinite(images.detach().sum(dtype=torch.float64)))
            and not bool(torch.isfinite(images).all())
        ):
            raise ValueError("images contain NaN or inf: clean or clamp the input before mixing (torch.nan_to_num)")
        layout = self._layout(height, width, channels, images.device, dataset)
        num_levels = len(self.block_sizes)
        # The CPU runs each image's whole shuffle in one compiled pass (same integers as the path below,
        # which other devices run); images that carry gradient take the differentiable torch gathers.
        compiled = (
            self.compiled_cpu and images.device.type == "cpu" and not (images.requires_grad and torch.is_grad_enabled())
        )
        if not self.targeted:
            levels = torch.full((batch, layout.num_regions), num_levels - 1, device=images.device)
            if compiled:
                mixed = self._shuffle_compiled(images, layout, ids, epoch, num_levels - 1)
            else:
                mixed = self._take(images, self._sources(layout, ids, epoch, [num_levels - 1])[0]).view_as(images)

            def measure() -> tuple[torch.Tensor, torch.Tensor]:
                values = quantize(images).view(-1)
                source = self._sources(layout, ids, epoch, [num_levels - 1])
                both = torch.cat([identity_sources(batch, channels, layout.pixels, images.device), source])
                totals = self._energies(values, both, layout).sum(2)
                return self._to_vfe(totals[:, 0], layout, channels), self._to_vfe(totals[:, 1], layout, channels)

            report = MixReport(None, torch.ones(batch, dtype=torch.bool, device=images.device), measure)
            return self._finish(mixed, MixParams(ids, epoch, levels, dataset), report)

        if compiled and self.attention is None:
            return self._mix_compiled(images, layout, ids, epoch)
        values = quantize(images).view(-1)
        clear_region = self._energies(values, identity_sources(batch, channels, layout.pixels, images.device), layout)[
            :, 0
        ]
        clear_totals = clear_region.sum(1)

        target = self._target_totals(clear_totals, layout, channels)
        all_sources = self._sources(layout, ids, epoch)  # [L, B, C, P]
        energy = self._energies(values, all_sources, layout)  # [B, L, R]
        clear = images.float().div(255.0) if images.dtype == torch.uint8 else images
        scores = self.attention(clear).flatten(1) if self.attention is not None else clear_region
        order = torch.argsort(scores.detach(), dim=1, descending=True, stable=True)
        ranked = energy.gather(2, order.unsqueeze(1).expand_as(energy))
        finest, coarsest = ranked[:, -1], ranked[:, 0]
        before = torch.cumsum(finest, 1) - finest
        after = coarsest.sum(1, keepdim=True) - torch.cumsum(coarsest, 1)
        # Energy of state (rank i at level j, higher ranks finest, lower ranks coarsest), exact when
        # regions do not interact ('reference' with window = region).
        predicted = ((before + after).unsqueeze(2) + ranked.transpose(1, 2)).flatten(1)
        last_state = predicted.shape[1] - 1
        state = self._first_state_reaching(predicted, target)
        for step in range(self.max_refinements + 1):
            levels = self._levels_from_state(state, order)
            reference = self.vfe_method == "reference"
            achieved = selected_energies(values, all_sources, levels, layout.geometry, reference).sum(1)
            short = (achieved < target) & (state < last_state)
            if step == self.max_refinements or not bool(short.any()):
                break
            # 'corrected' regions interact through shared borders: shift the per-region prediction by
            # the observed error and move at least one step further.
            error = achieved - predicted.gather(1, state.view(-1, 1)).squeeze(1)
            shifted = torch.maximum(self._first_state_reaching(predicted + error.unsqueeze(1), target), state + 1)
            state = torch.where(short, shifted.clamp(max=last_state), state)

        mixed = take_selected(images, all_sources, levels, layout.geometry)
        if self.attention is not None and torch.is_grad_enabled():
            coarse, fine = (self._take(clear, all_sources[i]).view_as(clear) for i in (0, -1))
            mixed = self._straight_through(mixed, coarse, fine, scores, order, state, layout)
        # Unreached targets are counted in the report, not logged here: callers log once per round.
        clear_vfe, achieved_vfe = self._to_vfe(clear_totals, layout, channels), self._to_vfe(achieved, layout, channels)
        report = MixReport(
            self._to_vfe(target, layout, channels), achieved >= target, lambda: (clear_vfe, achieved_vfe)
        )
        return self._finish(mixed, MixParams(ids, epoch, levels, dataset), report)

    def _mix_compiled(self, images: torch.Tensor, layout: _Layout, ids: torch.Tensor, epoch: int) -> MixResult:
        """The targeted shuffle on the CPU: :func:`fl_vmix.privacy._kernels.mix_kernel` does per image what
        the rest of :meth:`mix` does batch-wide (the tests hold the two equal)."""
        from fl_vmix.privacy._kernels import mix_kernel, use_torch_threads

        use_torch_threads()
        batch, channels = images.shape[:2]
        geometry = layout.geometry
        words = layout.prf.words(ids, epoch, geometry.words_per_sample)
        bits, mixed = _bits(images)
        levels = np.empty((batch, layout.num_regions), dtype=np.int64)
        clear, target, achieved = (np.empty(batch, dtype=np.int64) for _ in range(3))
        # The kernel quantises each image as quantize() does; other float types go through quantize() first.
        if images.dtype in (torch.float32, torch.float64):
            data, scale, limit = images.detach().contiguous(), float(SCALE), MAX_ABS
        elif images.dtype == torch.uint8:
            data, scale, limit = images.detach().contiguous(), float(UINT8_STEP), math.inf
        else:
            data, scale, limit = quantize(images), 1.0, math.inf
        bad = mix_kernel(
            np.ascontiguousarray(words),
            geometry.kernel_tables(tuple(range(len(self.block_sizes)))),
            data.view(batch, -1).numpy(),
            scale,
            limit,
            bits.view(batch, -1).numpy(),
            layout.width,
            layout.region,
            self.vfe_method == "reference",
            -1.0 if self.target_ratio is None else float(self.target_ratio),
            self._absolute_total(layout, channels),
            self.max_refinements,
            mixed.view(batch, channels, -1).numpy(),
            levels,
            clear,
            target,
            achieved,
        )
        if bad:
            quantize(images)  # raises, naming the problem
            raise AssertionError("the mix kernel and quantize disagree on the images' range")
        clear_totals, target_totals, achieved_totals = (torch.from_numpy(t) for t in (clear, target, achieved))
        clear_vfe, achieved_vfe = (
            self._to_vfe(clear_totals, layout, channels),
            self._to_vfe(achieved_totals, layout, channels),
        )
        report = MixReport(
            self._to_vfe(target_totals, layout, channels),
            achieved_totals >= target_totals,
            lambda: (clear_vfe, achieved_vfe),
        )
        return self._finish(
            mixed.view(images.dtype), MixParams(ids, epoch, torch.from_numpy(levels), layout.dataset), report
        )

    def _shuffle_compiled(
        self, images: torch.Tensor, layout: _Layout, ids: torch.Tensor, epoch: int, level: int
    ) -> torch.Tensor:
        """Every region at one level on the CPU, without a batch-wide source map."""
        from fl_vmix.privacy._kernels import shuffle_kernel, use_torch_threads

        use_torch_threads()
        batch, channels = images.shape[:2]
        words = layout.prf.words(ids, epoch, layout.geometry.words_per_sample)
        bits, mixed = _bits(images)
        shuffle_kernel(
            np.ascontiguousarray(words),
            layout.geometry.kernel_tables((level,)),
            bits.view(batch, -1).numpy(),
            mixed.view(batch, channels, -1).numpy(),
        )
        return mixed.view(images.dtype)

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

    def replay(self, images: torch.Tensor, params: MixParams) -> torch.Tensor:
        """Replay a shuffle: apply the parameters a :meth:`mix` call returned to images."""
        return self._replay(images, params, invert=False)

    def forward(
        self, images: torch.Tensor, sample_ids: object, epoch: int | None = None, dataset: str | None = None
    ) -> torch.Tensor:
        return self.mix(images, sample_ids, epoch, dataset).images

    def invert(
        self,
        obfuscated: torch.Tensor,
        sample_ids: object,
        epoch: int | None = None,
        params: MixParams | None = None,
        dataset: str | None = None,
    ) -> torch.Tensor:
        """Exact inverse for the key holder.

        With a VFE target the level of each region depends on the clear image, so the parameters
        are needed: pass ``params`` (from :meth:`mix`); the mixer's last call is used
        when its ids match. Without a target the key, ids and dataset suffice.
        """
        self._check_images(obfuscated)
        ids = self._check_ids(sample_ids, obfuscated.shape[0], obfuscated.device)
        dataset = check_dataset(dataset)
        if params is None:
            if not self.targeted:
                _, channels, height, width = obfuscated.shape
                regions = self._layout(height, width, channels, obfuscated.device, dataset).num_regions
                levels = torch.full((ids.numel(), regions), len(self.block_sizes) - 1, device=obfuscated.device)
                params = MixParams(ids, self._epoch(epoch), levels, dataset)
            elif (
                self.last_params is not None
                and torch.equal(self.last_params.sample_ids, ids)
                and (epoch is None or self._epoch(epoch) == self.last_params.epoch)
                and (dataset is None or dataset == self.last_params.dataset)
            ):
                params = self.last_params
            else:
                raise ValueError(
                    "invert needs the MixParams of these images: with a VFE target each region's block size "
                    "depends on the clear image; pass params=result.params from mixer.mix(...)"
                )
        elif not torch.equal(params.sample_ids.to(ids.device), ids):
            raise ValueError("params were planned for other sample_ids: pass the ids the images were mixed with")
        elif dataset is not None and dataset != params.dataset:
            raise ValueError(
                f"params were planned for dataset {params.dataset!r}, not {dataset!r}: pass the params of these images"
            )
        return self._replay(obfuscated, params, invert=True)

    def _check_params(self, params: MixParams, batch: int, regions: int) -> None:
        """Refuse parameters no :meth:`mix` could have made (levels out of range, a bad epoch or dataset)."""
        levels = params.levels
        if not isinstance(levels, torch.Tensor) or levels.dtype.is_floating_point or levels.dtype == torch.bool:
            raise ValueError("params.levels must be an integer tensor [B, R]: pass result.params from mixer.mix(...)")
        if levels.shape != (batch, regions):
            raise ValueError(
                f"params hold levels for {tuple(levels.shape)} (images x regions) but the images need "
                f"{(batch, regions)}: replay params only on the batch they were planned for"
            )
        if levels.numel() and (int(levels.min()) < 0 or int(levels.max()) >= len(self.block_sizes)):
            raise ValueError(
                f"params.levels must lie in [0, {len(self.block_sizes)}) (one per block size {self.block_sizes}), "
                f"got values in [{int(levels.min())}, {int(levels.max())}]: pass result.params from mixer.mix(...)"
            )

    def _replay(self, images: torch.Tensor, params: MixParams, invert: bool) -> torch.Tensor:
        self._check_images(images)
        batch, channels, height, width = images.shape
        layout = self._layout(height, width, channels, images.device, check_dataset(params.dataset))
        self._check_params(params, batch, layout.num_regions)
        ids = self._check_ids(params.sample_ids, batch, images.device)
        all_sources = self._sources(layout, ids, self._epoch(params.epoch))
        levels = params.levels.to(device=images.device, dtype=torch.int64)
        if not invert:
            return take_selected(images, all_sources, levels, layout.geometry)
        source = select_sources(all_sources, levels, layout.geometry)
        out = torch.empty_like(images).view(-1).index_copy_(0, source.reshape(-1).long(), images.reshape(-1))
        return out.view_as(images)

    def as_transform(self) -> VisualMixerTransform:
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
