"""The key holder's oracle for scoring the jigsaw attack: the true block sizes and the true shuffle.

An attacker does not know VisualMixer's per-region block sizes; handing them to the solver makes the
result an upper bound on what an attacker who must estimate them achieves. Scoring placements needs
the true permutation, which only replaying the shuffle with the key gives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fl_vmix.evaluation.attack_suite.settings import JIGSAW_SUCCESS_GAIN, JIGSAW_SUCCESS_IN_PLACE, JIGSAW_SUCCESS_SSIM
from fl_vmix.evaluation.attacks import blocks_in_place, extract_blocks, neighbours_correct, solve_jigsaw
from fl_vmix.privacy.mixer import MixParams, VisualMixer


@dataclass
class JigsawOutcome:
    images: torch.Tensor
    blocks_in_place: float
    neighbours_correct: float
    mean_block_size: float
    shuffled_regions: int


def block_size_map(mixer: VisualMixer, params: MixParams, height: int, width: int) -> torch.Tensor:
    """Block side (px) of every region, ``[B, rows, cols]``, from VisualMixer's levels (the key holder's oracle)."""
    rows, cols = -(-height // mixer.region_size), -(-width // mixer.region_size)
    sizes = torch.tensor(mixer.block_sizes, dtype=torch.long)
    return sizes[params.levels.cpu().long()].view(-1, rows, cols)


def true_block_permutation(mixer: VisualMixer, params: MixParams, shape: torch.Size, block_size: int) -> torch.Tensor:
    """The shuffle of ``mixer`` at ``block_size`` in the jigsaw's gather convention, ``[B, C, Ry, Rx, N]``.

    Replays the shuffle (:meth:`VisualMixer.apply`, which needs the key, so this is for scoring only) on
    an image whose values are their own flat indices: each output pixel then holds its source position.
    Entry ``q`` is the source block (row-major in the region) of the top-left pixel of shuffled block
    ``q``; only regions shuffled at ``block_size`` are meaningful. The source *channel* is ignored:
    the jigsaw restores positions, not the channel order.
    """
    batch, channels, height, width = shape
    index = torch.arange(channels * height * width, dtype=torch.float64).view(1, channels, height, width)
    source = mixer.replay(index.expand(batch, -1, -1, -1).contiguous(), params).long()
    top_left = extract_blocks(source, mixer.region_size, block_size)[..., 0, 0]  # [B, C, Ry, Rx, N]
    pixel = top_left % (height * width)
    y, x = pixel // width, pixel % width
    n = mixer.region_size // block_size
    return ((y % mixer.region_size) // block_size) * n + (x % mixer.region_size) // block_size


def jigsaw_with_oracle_sizes(
    obfuscated: torch.Tensor, mixer: VisualMixer, params: MixParams, refine_steps: int | None = None
) -> JigsawOutcome:
    """Reassemble VisualMixer output region by region at each region's true block size, and score the
    placement against the true shuffle.

    The images are what :func:`~fl_vmix.evaluation.attacks.solve_jigsaw_per_region` returns for the
    same block-size map (one :func:`solve_jigsaw` per distinct size, on the images that use it, merged
    by region); doing the loop here keeps each solve's placement, which blocks-in-place needs.
    Regions at ``block == region_size`` are not shuffled and are neither solved nor counted.
    """
    rs = mixer.region_size
    _, c, h, w = obfuscated.shape
    ry, rx = h // rs, w // rs
    size_map = block_size_map(mixer, params, h, w)[:, :ry, :rx]
    out = obfuscated.clone()
    in_place = adjacent = weight = 0.0
    pixel_weighted_size = 0.0
    shuffled = 0
    for size in torch.unique(size_map).tolist():
        if size == rs:
            continue
        regions = size_map == size  # [B, Ry, Rx]
        users = regions.flatten(1).any(1).nonzero().squeeze(1)
        solved = solve_jigsaw(obfuscated[users], rs, size, refine_steps=refine_steps)
        perm = true_block_permutation(mixer, subset_params(params, users), obfuscated[users].shape, size)
        mask = regions[users].unsqueeze(1).expand(-1, c, -1, -1)  # [U, C, Ry, Rx]
        k = int(mask.sum())
        in_place += blocks_in_place(solved.placement[mask], perm[mask]) * k
        adjacent += neighbours_correct(solved.placement[mask], perm[mask]) * k
        weight += k
        shuffled += int(regions.sum())
        pixel_weighted_size += size * int(regions.sum())
        pixel_mask = regions[users].repeat_interleave(rs, 1).repeat_interleave(rs, 2).unsqueeze(1)
        core = out[users, :, : ry * rs, : rx * rs]
        out[users, :, : ry * rs, : rx * rs] = torch.where(pixel_mask, solved.images[..., : ry * rs, : rx * rs], core)
    nan = float("nan")
    return JigsawOutcome(
        out,
        in_place / weight if weight else nan,
        adjacent / weight if weight else nan,
        pixel_weighted_size / shuffled if shuffled else float(rs),
        shuffled,
    )


def subset_params(params: MixParams, users: torch.Tensor) -> MixParams:
    return replace(
        params,
        sample_ids=params.sample_ids[users.to(params.sample_ids.device)],
        levels=params.levels[users.to(params.levels.device)],
    )


def jigsaw_success(in_place: float, ssim_reassembled: float, ssim_obfuscated: float) -> bool:
    gain = ssim_reassembled - ssim_obfuscated
    return bool(
        in_place >= JIGSAW_SUCCESS_IN_PLACE or (ssim_reassembled >= JIGSAW_SUCCESS_SSIM and gain >= JIGSAW_SUCCESS_GAIN)
    )


def jigsaw_verdict(in_place: float, ssim_reassembled: float, ssim_obfuscated: float) -> str:
    """``"leaks"`` (success), ``"partial"`` (no success, but the reassembly is at least
    ``JIGSAW_SUCCESS_GAIN`` SSIM closer to the clear image than the obfuscated one) or ``"holds"``."""
    if jigsaw_success(in_place, ssim_reassembled, ssim_obfuscated):
        return "leaks"
    return "partial" if ssim_reassembled - ssim_obfuscated >= JIGSAW_SUCCESS_GAIN else "holds"


def region_means(images: torch.Tensor, region_size: int) -> torch.Tensor:
    """Each region replaced by its per-channel mean: what any within-region shuffle leaves intact."""
    pooled = torch.nn.functional.avg_pool2d(images, region_size, ceil_mode=True)
    return pooled.repeat_interleave(region_size, 2).repeat_interleave(region_size, 3)[
        ..., : images.shape[-2], : images.shape[-1]
    ]
