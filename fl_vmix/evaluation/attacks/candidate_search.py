"""Smoothness-guided candidate search: the generic jigsaw attack, without oracle block sizes (adversary A2).

What the attacker knows: the obfuscated images and the method's public settings: the region grid and
the *candidate* block sizes (VisualMixer's ``block_sizes``). What it does not know: the key, hence the
permutations, and, with a VFE target, which block size each region used. Pixels never leave their
region and blocks are moved whole, so every un-shuffle of a region at a candidate block size is a
rearrangement of the region's obfuscated blocks. Natural images are smooth, so the attacker picks, per
(image, channel, region), the rearrangement that makes the region and its borders smoothest.

Search, vectorised over images, channels and regions (candidates batched):

1. **Candidates** for every region, channel and candidate block size ``b``: ``candidates`` uniformly
   random permutations of the region's ``(r / b)^2`` obfuscated blocks (all of them when there are at
   most ``candidates``, so small puzzles are searched exhaustively); ``ramps`` *ramp* candidates, the
   blocks sorted by their mean and laid out along a direction (angles evenly spaced over 360 degrees),
   the smoothest arrangement of a region whose content is a gradient; and ``swaps`` *local* candidates,
   the current arrangement with two random blocks exchanged, which over the rounds make the search a
   stochastic hill climb. The region's current arrangement is always a candidate, so a round never
   makes a region rougher.
2. **Cost** of a candidate: the sum over neighbouring pixel pairs inside the region plus the pairs
   across its four borders with the neighbouring pixels as they currently are, of the absolute
   (``cost="l1"``, total variation, the default: it measured better than squared differences on
   CIFAR-10) or squared (``"l2"``) difference.
3. **Block size**: with a VFE target each region used one of the candidate sizes, unknown to the
   attacker. :func:`estimate_block_sizes` infers it per region (pixel pairs inside intact blocks are
   natural neighbours, pairs across block edges are not) and only candidates of that size compete;
   smoothness alone would always prefer the finest size.
4. **Schedule**: regions are coloured like a checkerboard; all regions of one colour are updated at
   once (their neighbours, of the other colour, stay fixed, so choices never conflict), then the other
   colour, for ``rounds`` rounds with fresh random candidates each round.

Each channel is searched on its own (VisualMixer permutes channels independently). Channel-order
permutation (``permute_channels``) is not undone. Only full regions (the ``H // r x W // r`` grid from
the top left) are searched; pixels of partial border regions are kept as they are (and serve as
borders).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_vmix.evaluation.attacks.scoring import ReconstructionScore, score_reconstruction

Cost = Literal["l1", "l2"]


@dataclass(frozen=True)
class CandidateSearchResult:
    """``images``: the searched images ``[B, C, H, W]``; ``block_size``: int64 ``[B, C, Ry, Rx]``, the block
    size of the arrangement kept in each full region (0 where the obfuscated arrangement was kept);
    ``cost_before`` / ``cost_after``: ``[B]`` smoothness cost summed over all neighbouring pixel pairs of
    the full-region area (every channel), before and after the search."""

    images: Tensor
    block_size: Tensor
    cost_before: Tensor
    cost_after: Tensor

    def score(self, clear: Tensor, obfuscated: Tensor | None = None) -> ReconstructionScore:
        return score_reconstruction(self.images, clear, obfuscated)


def _check(
    images: Tensor, region_size: int, block_sizes: Sequence[int], candidates: int, ramps: int, rounds: int
) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float [B, C, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    if isinstance(region_size, bool) or not isinstance(region_size, int) or region_size < 2:
        raise ValueError(f"region_size must be an int >= 2 (pixels), got {region_size!r}")
    if min(images.shape[-2:]) < region_size:
        raise ValueError(f"images of {tuple(images.shape[-2:])} px hold no full {region_size}-px region")
    sizes = list(block_sizes)
    if not sizes or any(not isinstance(b, int) or b < 1 or region_size % b for b in sizes):
        raise ValueError(
            f"block_sizes must be ints dividing region_size={region_size}, got {block_sizes!r}: pass the method's "
            "public candidate block sizes, e.g. (2, 1)"
        )
    if candidates < 0 or ramps < 0 or candidates + ramps == 0 or rounds < 1:
        raise ValueError(
            f"need candidates, ramps, swaps >= 0 (not all 0) and rounds >= 1; got {candidates}, {ramps}, {rounds}"
        )


def _regions(images: Tensor, r: int) -> Tensor:
    """Full regions ``[B, C, Ry, Rx, r, r]`` (a copy)."""
    b, c, h, w = images.shape
    ry, rx = h // r, w // r
    return images[..., : ry * r, : rx * r].reshape(b, c, ry, r, rx, r).permute(0, 1, 2, 4, 3, 5).contiguous()


def _paste(images: Tensor, regions: Tensor) -> Tensor:
    b, c, ry, rx, r, _ = regions.shape
    out = images.clone()
    out[..., : ry * r, : rx * r] = regions.permute(0, 1, 2, 4, 3, 5).reshape(b, c, ry * r, rx * r)
    return out


def _borders(images: Tensor, r: int) -> Tensor:
    """Pixels just outside every full region, ``[B, C, Ry, Rx, 4, r]`` (top, bottom, left, right; NaN off-image)."""
    b, c, h, w = images.shape
    ry, rx = h // r, w // r
    p = F.pad(images, (1, 1, 1, 1), value=float("nan"))
    rows, cols = torch.arange(ry, device=images.device) * r, torch.arange(rx, device=images.device) * r
    top = p[:, :, rows, 1 : 1 + rx * r].reshape(b, c, ry, rx, r)
    bottom = p[:, :, rows + r + 1, 1 : 1 + rx * r].reshape(b, c, ry, rx, r)
    left = p[:, :, 1 : 1 + ry * r, cols].reshape(b, c, ry, r, rx).transpose(3, 4)
    right = p[:, :, 1 : 1 + ry * r, cols + r + 1].reshape(b, c, ry, r, rx).transpose(3, 4)
    return torch.stack([top, bottom, left, right], dim=-2)


def _cost(x: Tensor, borders: Tensor | None, kind: Cost) -> Tensor:
    """Smoothness cost of regions ``[..., r, r]`` with borders ``[..., 4, r]`` (NaN = no neighbour)."""

    def penalty(d: Tensor) -> Tensor:
        return d.square() if kind == "l2" else d.abs()

    vertical = penalty(x[..., 1:, :] - x[..., :-1, :]).sum((-1, -2))
    total = vertical + penalty(x[..., :, 1:] - x[..., :, :-1]).sum((-1, -2))
    if borders is not None:
        edges = torch.stack([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-2)
        total = total + penalty(edges - borders).nan_to_num(0.0).sum((-1, -2))
    return total


def _image_cost(images: Tensor, r: int, kind: Cost) -> Tensor:
    """``[B]``: penalty summed over all neighbouring pixel pairs of the full-region area, every channel."""
    x = images[..., : images.shape[-2] // r * r, : images.shape[-1] // r * r]
    dy, dx = x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
    if kind == "l2":
        return dy.square().sum((1, 2, 3)) + dx.square().sum((1, 2, 3))
    return dy.abs().sum((1, 2, 3)) + dx.abs().sum((1, 2, 3))


def _blocks(regions: Tensor, b: int) -> Tensor:
    """``[..., r, r]`` -> ``[..., n, b, b]`` blocks, row-major."""
    r = regions.shape[-1]
    k = r // b
    return regions.reshape(*regions.shape[:-2], k, b, k, b).transpose(-3, -2).reshape(*regions.shape[:-2], k * k, b, b)


def _assemble(blocks: Tensor, r: int) -> Tensor:
    """``[..., n, b, b]`` -> ``[..., r, r]``."""
    b = blocks.shape[-1]
    k = r // b
    return blocks.reshape(*blocks.shape[:-3], k, k, b, b).transpose(-3, -2).reshape(*blocks.shape[:-3], r, r)


def _ramp_ranks(k: int, ramps: int, device: torch.device) -> Tensor:
    """``[ramps, k*k]``: rank of each block position along ``ramps`` directions evenly spaced over 360 degrees."""
    angles = torch.arange(ramps, device=device, dtype=torch.float64) * (2 * math.pi / ramps) + 0.1
    y, x = torch.meshgrid(torch.arange(k, device=device), torch.arange(k, device=device), indexing="ij")
    proj = torch.cos(angles).view(-1, 1) * x.flatten() + torch.sin(angles).view(-1, 1) * y.flatten()
    return proj.argsort(-1).argsort(-1)


def _candidates(obf_regions: Tensor, b: int, candidates: int, ramps: int, generator: torch.Generator) -> Tensor:
    """Candidate arrangements ``[..., K, r, r]`` of every region's obfuscated blocks at block size ``b``."""
    r = obf_regions.shape[-1]
    blocks = _blocks(obf_regions, b)  # [..., n, b, b]
    lead, n = blocks.shape[:-3], blocks.shape[-3]
    perms = []
    if n == 1:
        perms.append(torch.zeros(*lead, 1, 1, dtype=torch.long, device=blocks.device))
    else:
        if candidates and math.factorial(n) <= candidates:
            every = torch.tensor(list(itertools.permutations(range(n))), device=blocks.device)
            perms.append(every.expand(*lead, -1, -1))
        elif candidates:
            keys = torch.rand((*lead, candidates, n), generator=generator).to(blocks.device)
            perms.append(keys.argsort(-1))
        if ramps:
            by_mean = blocks.mean((-1, -2)).argsort(-1)  # [..., n]: blocks from darkest to brightest
            ranks = _ramp_ranks(math.isqrt(n), ramps, blocks.device)  # [ramps, n]
            perms.append(by_mean.unsqueeze(-2).expand(*lead, ramps, n).gather(-1, ranks.expand(*lead, -1, -1)))
    if not perms:
        return obf_regions.new_empty(*lead, 0, r, r)
    perm = torch.cat(perms, dim=-2)  # [..., K, n]: candidate position q takes obfuscated block perm[q]
    idx = perm[..., None, None].expand(*perm.shape, b, b)
    chosen = blocks.unsqueeze(-4).expand(*lead, perm.shape[-2], n, b, b).gather(-3, idx)
    return _assemble(chosen, r)


def estimate_block_sizes(regions: Tensor, block_sizes: Sequence[int], threshold: float = 1.5) -> Tensor:
    """Block size each region was most likely shuffled with, ``[B, Ry, Rx]``, from regions ``[B, C, Ry, Rx, r, r]``.

    A region shuffled with ``s``-px blocks keeps natural neighbours inside its aligned ``s``-px blocks and
    random ones across their edges. For a candidate ``b`` (coarse to fine) the test compares the pixel
    pairs that straddle a ``b``-block edge with those that straddle an edge of the next finer candidate
    ``f`` (1 for the finest) but no ``b``-edge: mean absolute difference, pooled over channels and both
    directions. If the shuffle used ``b``, the first are random neighbours and the second natural ones,
    so the ratio is well above 1; if it used ``f`` or finer, both are random and the ratio is near 1.
    The coarsest candidate ``1 < b < r`` whose ratio exceeds ``threshold`` wins, else the finest
    candidate. (``b = r``, an unshuffled region, is never chosen: the search keeps the obfuscated
    arrangement as a candidate anyway.)
    """
    r = regions.shape[-1]
    sizes = sorted(set(block_sizes), reverse=True)
    dx = (regions[..., :, 1:] - regions[..., :, :-1]).abs()  # [..., r, r-1]: pair (j, j+1) in each row
    dy = (regions[..., 1:, :] - regions[..., :-1, :]).abs()
    offsets = torch.arange(1, r, device=regions.device)  # pair (j, j+1) straddles a b-edge iff (j + 1) % b == 0
    estimate = torch.full(regions.shape[:1] + regions.shape[2:4], sizes[-1], dtype=torch.long, device=regions.device)
    decided = torch.zeros_like(estimate, dtype=torch.bool)
    for i, b in enumerate(sizes):
        finer = sizes[i + 1] if i + 1 < len(sizes) else 1
        across = offsets % b == 0
        inside = (offsets % finer == 0) & ~across
        if not 1 < b < r or not inside.any():
            continue

        def mean_diff(pairs: Tensor) -> Tensor:
            total = dx[..., pairs].sum((1, -1, -2)) + dy[..., pairs, :].sum((1, -1, -2))
            return total / (2 * int(pairs.sum()) * r * regions.shape[1])

        take = (mean_diff(across) > threshold * mean_diff(inside) + 1e-12) & ~decided
        estimate[take] = b
        decided |= take
    return estimate


def _swapped(current: Tensor, b: int, swaps: int, generator: torch.Generator) -> Tensor:
    """``swaps`` candidates ``[..., swaps, r, r]``: the current arrangement, two random ``b``-px blocks exchanged."""
    blocks = _blocks(current, b)  # [..., n, b, b]
    lead, n = blocks.shape[:-3], blocks.shape[-3]
    first = torch.randint(n, (*lead, swaps), generator=generator)
    second = (first + 1 + torch.randint(n - 1, (*lead, swaps), generator=generator)) % n  # never the same block
    perm = torch.arange(n).expand(*lead, swaps, n).clone()
    perm.scatter_(-1, first.unsqueeze(-1), second.unsqueeze(-1))
    perm.scatter_(-1, second.unsqueeze(-1), first.unsqueeze(-1))
    perm = perm.to(blocks.device)
    idx = perm[..., None, None].expand(*perm.shape, b, b)
    return _assemble(blocks.unsqueeze(-4).expand(*lead, swaps, n, b, b).gather(-3, idx), current.shape[-1])


def candidate_search(
    obfuscated: Tensor,
    region_size: int,
    block_sizes: Sequence[int],
    *,
    candidates: int = 64,
    ramps: int = 32,
    swaps: int = 64,
    rounds: int = 10,
    cost: Cost = "l1",
    estimate_sizes: bool = True,
    size_threshold: float = 1.5,
    seed: int = 0,
    chunk: int = 32,
) -> CandidateSearchResult:
    """Un-shuffle every full region by picking its smoothest candidate arrangement (module docstring).

    Args:
        obfuscated: ``[B, C, H, W]`` float images.
        region_size, block_sizes: the method's public grid and candidate block sizes (VisualMixer's
            ``region_size`` and ``block_sizes``); block sizes must divide the region size.
        candidates: random permutations per region, channel, block size and round.
        ramps: ramp candidates (directions) per region, channel and block size.
        swaps: local-search candidates per region, channel, block size and round: the current arrangement
            with two random blocks exchanged (over rounds, a stochastic hill climb on smoothness).
        rounds: checkerboard sweeps. cost: ``"l2"`` or ``"l1"`` pixel-difference penalty.
        estimate_sizes: restrict each region's candidates to the block size :func:`estimate_block_sizes`
            infers (with ``size_threshold``); otherwise all candidate sizes compete on smoothness alone,
            which favours the finest size (a ramp of single pixels is always smoother than one of blocks).
        seed: seeds the random candidates. chunk: images processed together (memory).
    """
    _check(obfuscated, region_size, block_sizes, candidates + swaps, ramps, rounds)
    if cost not in ("l1", "l2"):
        raise ValueError(f"cost must be 'l1' or 'l2', got {cost!r}")
    generator = torch.Generator().manual_seed(seed)
    r = region_size
    outputs, sizes, before, after = [], [], [], []
    for start in range(0, obfuscated.shape[0], chunk):
        obf = obfuscated[start : start + chunk]
        images = obf.clone()
        obf_regions = _regions(obf, r)
        b, c, ry, rx = obf_regions.shape[:4]
        chosen = torch.zeros(b, c, ry, rx, dtype=torch.long, device=obf.device)
        parity = (torch.arange(ry).view(-1, 1) + torch.arange(rx).view(1, -1)) % 2
        before.append(_image_cost(obf, r, cost))
        estimate = estimate_block_sizes(obf_regions, block_sizes, size_threshold) if estimate_sizes else None
        for _ in range(rounds):
            for colour in (0, 1):
                ys, xs = (parity == colour).nonzero(as_tuple=True)
                borders = _borders(images, r)[:, :, ys, xs].unsqueeze(-3)  # [B, C, N, 1, 4, r]
                current = _regions(images, r)[:, :, ys, xs]
                pool, pool_size = [], []
                for size in block_sizes:
                    cand = _candidates(obf_regions[:, :, ys, xs], size, candidates, ramps, generator)
                    if swaps and size < r:
                        cand = torch.cat([cand, _swapped(current, size, swaps, generator)], dim=-3)
                    pool.append(cand)
                    pool_size.append(torch.full(cand.shape[:-2], size, dtype=torch.long, device=obf.device))
                pool.append(current.unsqueeze(-3))  # last, so that a fresh candidate wins a tie
                pool_size.append(chosen[:, :, ys, xs].unsqueeze(-1))
                everything = torch.cat(pool, dim=-3)  # [B, C, N, K, r, r]
                costs = _cost(everything, borders, cost)  # [B, C, N, K]
                if estimate is not None:
                    sizes_of = torch.cat(pool_size[:-1], dim=-1)  # [B, C, N, K - 1]
                    wrong = sizes_of != estimate[:, ys, xs].unsqueeze(1).unsqueeze(-1)
                    costs[..., :-1] = costs[..., :-1].masked_fill(wrong, float("inf"))
                best = costs.argmin(-1)  # [B, C, N]
                pick = best[..., None, None, None].expand(*best.shape, 1, r, r)
                regions = _regions(images, r)
                regions[:, :, ys, xs] = everything.gather(-3, pick).squeeze(-3)
                chosen[:, :, ys, xs] = torch.cat(pool_size, dim=-1).gather(-1, best.unsqueeze(-1)).squeeze(-1)
                images = _paste(images, regions)
        outputs.append(images)
        sizes.append(chosen)
        after.append(_image_cost(images, r, cost))
    return CandidateSearchResult(torch.cat(outputs), torch.cat(sizes), torch.cat(before), torch.cat(after))
