"""Known-plaintext attack on a client's shuffle: learn permutations from known pairs, try them elsewhere.

Adversary (A2 with side knowledge): knows the algorithm and its public settings, and holds ``K``
(clear, obfuscated) pairs of one client's images (a leaked or public subset), never the key. Against a
shuffle that *reuses* permutations (a per-key bank, as fl_vmix had before its keyed PRF), the pairs
reveal permutations the client will use again.

1. **Learn.** Each known pair gives, for every (channel, region), the permutation that was applied:
   the obfuscated region's values are the clear region's values rearranged, so matching them (both
   sorted, ties in order) recovers where each output pixel came from (exact for distinct values; with
   repeated values one of the equally valid answers). With ``permute_channels`` a region's channels
   are pooled, since values may have moved between channels. The library is the distinct learned
   permutations: up to ``K * C * R``.
2. **Restore.** For each (channel, region) of the client's other obfuscated images, undo every library
   permutation and keep the smoothest result (least squared difference between neighbouring pixels
   inside the region): a reused permutation gives back the natural region, which is smooth.
3. **Control.** The same attack with a library learned from the same known images obfuscated under
   an unrelated key (the attacker's own): permutations from the same public distribution (block
   sizes, levels, channel pooling), but independent of the victim's key. What the victim's library
   adds over the control is what the known pairs leaked about the key's other permutations.

Scores, each next to the control's: the fraction of (channel, region) puzzles restored exactly (values
equal to the clear region), the fraction of values back at their clear value, and SSIM of the restored
images to the clear ones. Repeated values in a known region (common in 8-bit photographs) leave the
learned permutation ambiguous among them, so a reused permutation can restore most values of another
image but not all: the value fraction shows it where exact restores do not. Only full regions are
attacked; partial border regions stay obfuscated (and count as not restored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_vmix.privacy.similarity import ssim


@dataclass(frozen=True)
class KnownPlaintextResult:
    known: int  # K: known (clear, obfuscated) pairs
    candidates: int  # distinct learned permutations tried
    control_candidates: int  # distinct permutations learned under the unrelated key
    victims: int
    exact_fraction: float  # (channel, region) puzzles restored exactly with the learned library
    control_exact_fraction: float
    value_fraction: float  # values of full regions back at their clear value
    control_value_fraction: float
    ssim: float  # mean SSIM to clear of the restored victims
    control_ssim: float
    obfuscated_ssim: float  # the victims as they are

    @property
    def gain_ssim(self) -> float:
        return self.ssim - self.control_ssim


def _regions(images: torch.Tensor, region: int, pool_channels: bool) -> torch.Tensor:
    """Full regions as rows: ``[B * R * C, n]`` (``[B * R, C * n]`` when channels are pooled)."""
    batch, channels, height, width = images.shape
    ny, nx = height // region, width // region
    tiles = images[:, :, : ny * region, : nx * region].reshape(batch, channels, ny, region, nx, region)
    tiles = tiles.permute(0, 2, 4, 1, 3, 5)  # [B, ny, nx, C, region, region]
    return tiles.reshape(-1, channels * region * region) if pool_channels else tiles.reshape(-1, region * region)


def _place_regions(images: torch.Tensor, rows: torch.Tensor, region: int) -> torch.Tensor:
    """Inverse of :func:`_regions`: write region rows back into a copy of ``images``."""
    batch, channels, height, width = images.shape
    ny, nx = height // region, width // region
    out = images.clone()
    tiles = rows.reshape(batch, ny, nx, channels, region, region).permute(0, 3, 1, 4, 2, 5)
    out[:, :, : ny * region, : nx * region] = tiles.reshape(batch, channels, ny * region, nx * region)
    return out


def reused_permutation_shuffle(images: torch.Tensor, bank_size: int, region: int = 8, seed: int = 0) -> torch.Tensor:
    """INSECURE reference, for calibrating this attack only: every (image, channel, full region) takes one
    of ``bank_size`` shared pixel permutations (what fl_vmix's per-key bank did before its keyed PRF);
    ``seed`` plays the key. Not a privacy method and not available to the federated runs."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.argsort(torch.rand(bank_size, region * region, generator=g), dim=1)
    rows = _regions(images, region, pool_channels=False)
    pick = torch.randint(bank_size, (rows.shape[0],), generator=g)
    return _place_regions(images, rows.gather(1, bank[pick]), region)


def learn_permutations(
    clear: torch.Tensor, obfuscated: torch.Tensor, region: int, pool_channels: bool = False
) -> torch.Tensor:
    """Distinct permutations ``[M, n]`` seen in the known pairs: ``obfuscated_row = clear_row[perm]``."""
    if clear.shape != obfuscated.shape or clear.dim() != 4:
        raise ValueError(
            f"known pairs must be two [K, C, H, W] batches of the same shape, got {tuple(clear.shape)} and "
            f"{tuple(obfuscated.shape)}: pass each known image with its own obfuscation"
        )
    c_rows, o_rows = _regions(clear, region, pool_channels), _regions(obfuscated, region, pool_channels)
    source = torch.argsort(c_rows, dim=1, stable=True)
    target = torch.argsort(o_rows, dim=1, stable=True)
    perm = torch.empty_like(source).scatter_(1, target, source)  # output position target[k] reads source[k]
    return torch.unique(perm, dim=0)


def smoothness_cost(rows: torch.Tensor, region: int) -> torch.Tensor:
    """Squared neighbour differences inside each region: ``[..., C * region * region] -> [...]``."""
    grid = rows.reshape(*rows.shape[:-1], -1, region, region)
    dx = grid[..., :, 1:] - grid[..., :, :-1]
    dy = grid[..., 1:, :] - grid[..., :-1, :]
    return dx.square().sum(dim=(-3, -2, -1)) + dy.square().sum(dim=(-3, -2, -1))


def restore_smoothest(rows: torch.Tensor, candidates: torch.Tensor, region: int, budget: int = 2**24) -> torch.Tensor:
    """For each obfuscated row, the candidate un-shuffle with the smoothest result: ``[N, n]`` restored rows.

    A candidate ``perm`` says the row was ``clear[perm]``; it is undone by ``row[argsort(perm)]``.
    Candidates are tried in chunks of ``budget`` values (memory), each chunk vectorised over all rows.
    """
    inverse = torch.argsort(candidates, dim=1)
    n = rows.shape[1]
    best_cost = torch.full((rows.shape[0],), float("inf"), dtype=torch.float64)
    best = rows.clone()
    chunk = max(1, budget // max(1, rows.shape[0] * n))
    for start in range(0, inverse.shape[0], chunk):
        undone = rows[:, inverse[start : start + chunk]]  # [N, chunk, n]
        cost = smoothness_cost(undone, region).double()
        value, index = cost.min(dim=1)
        better = value < best_cost
        best_cost = torch.where(better, value, best_cost)
        best[better] = undone[better, index[better]]
    return best


def known_plaintext_attack(
    known_clear: torch.Tensor,
    known_obfuscated: torch.Tensor,
    control_obfuscated: torch.Tensor,
    victims_clear: torch.Tensor,
    victims_obfuscated: torch.Tensor,
    region: int,
    pool_channels: bool = False,
) -> KnownPlaintextResult:
    """Learn from ``K`` known pairs of a client, restore its other images, and run the control.

    ``control_obfuscated`` holds ``known_clear`` obfuscated with the same settings under an unrelated
    key. Images are float ``[B, C, H, W]`` in [0, 1]; the victims' clear images only score the result.
    """
    if victims_clear.shape != victims_obfuscated.shape:
        raise ValueError("victims_clear and victims_obfuscated must have the same shape (one clear image per victim)")
    if known_clear.shape[1:] != victims_clear.shape[1:]:
        raise ValueError("known and victim images must have the same [C, H, W]: they come from one client's data")
    if min(victims_clear.shape[-2:]) < region:
        raise ValueError(f"images of {tuple(victims_clear.shape[-2:])} px hold no full {region}-px region")
    library = learn_permutations(known_clear, known_obfuscated, region, pool_channels)
    control = learn_permutations(known_clear, control_obfuscated, region, pool_channels)
    rows = _regions(victims_obfuscated, region, pool_channels)
    clear_rows = _regions(victims_clear, region, pool_channels)
    outcome = {}
    for name, candidates in (("learned", library), ("control", control)):
        restored = restore_smoothest(rows, candidates, region)
        exact = (restored == clear_rows).all(dim=1).float().mean().item()
        values = (restored == clear_rows).float().mean().item()
        images = _place_regions(victims_obfuscated, restored, region)
        outcome[name] = (exact, values, ssim(images.clamp(0, 1), victims_clear).mean().item())
    return KnownPlaintextResult(
        known=int(known_clear.shape[0]),
        candidates=int(library.shape[0]),
        control_candidates=int(control.shape[0]),
        victims=int(victims_clear.shape[0]),
        exact_fraction=outcome["learned"][0],
        control_exact_fraction=outcome["control"][0],
        value_fraction=outcome["learned"][1],
        control_value_fraction=outcome["control"][1],
        ssim=outcome["learned"][2],
        control_ssim=outcome["control"][2],
        obfuscated_ssim=ssim(victims_obfuscated, victims_clear).mean().item(),
    )
