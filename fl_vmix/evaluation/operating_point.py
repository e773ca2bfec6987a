"""The paper's operating point at native resolution: which 32-px shuffle shows an attacker what the prototype's does.

The authors' prototype upsamples CIFAR-10 to 224 px and shuffles 2-px blocks inside 16-px regions there, so
one region spans 16 * 32 / 224 = 2.29 original pixels. fl_vmix shuffles the native image. To compare the two
on equal terms, each setting is applied to the same clear images and what comes out is looked at on the
original 32-px grid (the 224-px result is brought back with an antialiased downsampling, which is also what an
attacker would do first):

* ``obfuscated_ssim``: SSIM of the obfuscated image to the clear one (no attack at all);
* ``thumbnail_ssim``: SSIM of the bilinear region-mean image (what any within-region shuffle leaks; for the
  224-px setting taken at 224 px and downsampled);
* ``learned_ssim``: SSIM of the learned de-obfuscation network (:mod:`fl_vmix.evaluation.attacks.learned`),
  trained for the same number of steps on every setting (its features use the setting's region size on the
  32-px grid, rounded to at least 2 px for the 224-px setting).

The native setting closest to the prototype's on these numbers is the "paper operating point".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_vmix.evaluation.attacks.learned import (
    LearnedAttackConfig,
    MethodFactory,
    Obfuscation,
    attacker_key,
    keyed_method_factory,
    train_deobfuscator,
)
from fl_vmix.evaluation.attacks.regions import thumbnail
from fl_vmix.privacy.similarity import ssim


@dataclass(frozen=True)
class ShuffleSetting:
    """A VisualMixer setting, optionally applied after upsampling to ``image_size`` (the prototype's protocol)."""

    label: str
    region_size: int
    block_sizes: tuple[int, ...]
    target_ratio: float | None = None  # None: every region at the finest block size (the prototype's behaviour)
    image_size: int | None = None  # None: the native image; else upsample to this side, shuffle, come back

    def method_params(self) -> dict[str, object]:
        return {
            "region_size": self.region_size,
            "block_sizes": list(self.block_sizes),
            "target_ratio": self.target_ratio,
            "mode": "static",
            "permute_channels": False,
        }

    def region_on(self, side: int) -> float:
        """The region's side in pixels of a ``side``-px original image."""
        return self.region_size * side / self.image_size if self.image_size else float(self.region_size)


#: The prototype's CIFAR-10 protocol (224 px, 16-px regions, 2-px blocks per channel) and native candidates.
PROTOTYPE = ShuffleSetting("prototype 224 px, region 16, blocks 2", 16, (2,), image_size=224)
NATIVE: tuple[ShuffleSetting, ...] = (
    ShuffleSetting("native region 2, blocks 1", 2, (1,)),
    ShuffleSetting("native region 3, blocks 1", 3, (1,)),
    ShuffleSetting("native region 4, blocks 1", 4, (1,)),
    ShuffleSetting("native region 8, default (fl_vmix)", 8, (2, 1), target_ratio=3.0),
)


def resize(images: Tensor, side: int) -> Tensor:
    """Bilinear resize to ``side`` x ``side``, antialiased when shrinking (float images in [0, 1])."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    shrinking = side < images.shape[-1]
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=shrinking).clamp(
        0, 1
    )


def on_original_grid(setting: ShuffleSetting, method: Obfuscation) -> Obfuscation:
    """``method`` applied at the setting's size and brought back to the input's size (identity for native)."""
    if setting.image_size is None:
        return method
    size = setting.image_size

    def obfuscate(images: Tensor, ids: Tensor, epoch: int) -> Tensor:
        side = images.shape[-1]
        return resize(method(resize(images.float(), size), ids, epoch).float(), side)

    return obfuscate


def setting_factory(setting: ShuffleSetting) -> MethodFactory:
    """``key -> obfuscation`` of ``setting`` on the original grid, for the victims and the attacker alike."""
    build = keyed_method_factory("visualmixer", **setting.method_params())
    return lambda key: on_original_grid(setting, build(key))


def region_thumbnail(setting: ShuffleSetting, clear: Tensor, method: Obfuscation, ids: Tensor) -> Tensor:
    """The bilinear region-mean image on the original grid (taken where the shuffle happened)."""
    if setting.image_size is None:
        return thumbnail(method(clear, ids, 0).float(), setting.region_size, "bilinear").clamp(0, 1)
    big = method(resize(clear, setting.image_size), ids, 0).float()
    return resize(thumbnail(big, setting.region_size, "bilinear").clamp(0, 1), clear.shape[-1])


@dataclass(frozen=True)
class OperatingPointRow:
    label: str
    region_original_px: float
    obfuscated_ssim: float
    thumbnail_ssim: float
    learned_ssim: float | None
    learned_steps: int | None
    learned_seconds: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _mean(values: Tensor) -> float:
    return float(values.double().mean())


def measure(
    setting: ShuffleSetting,
    victims: Tensor,
    victim_ids: Tensor,
    *,
    public_images: Tensor | None = None,
    public_ids: Tensor | None = None,
    attack: LearnedAttackConfig | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> OperatingPointRow:
    """Scores of ``setting`` on ``victims`` (float [N, C, H, W] in [0, 1]); with ``attack``, the learned attack's."""
    factory = setting_factory(setting)
    victim_method = keyed_method_factory("visualmixer", **setting.method_params())(attacker_key(seed, "victim"))
    with torch.no_grad():
        obfuscated = on_original_grid(setting, victim_method)(victims, victim_ids, 0).float().clamp(0, 1)
        thumb = region_thumbnail(setting, victims, victim_method, victim_ids)
    learned_ssim = steps = seconds = None
    if attack is not None:
        if public_images is None:
            raise ValueError("the learned attack needs public images: pass public_images (disjoint from the victims)")
        grid = max(2, round(setting.region_on(victims.shape[-1])))
        config = LearnedAttackConfig(**{**asdict(attack), "region_size": grid, "seed": seed})

        def progress(report: dict[str, float]) -> None:
            log(f"  {setting.label}: " + ", ".join(f"{k} {v:.3g}" for k, v in report.items()))

        network, history = train_deobfuscator(public_images, factory, config, public_ids=public_ids, progress=progress)
        learned_ssim = _mean(ssim(network.reconstruct(obfuscated), victims))
        steps, seconds = history.steps, history.seconds
    return OperatingPointRow(
        label=setting.label,
        region_original_px=round(setting.region_on(victims.shape[-1]), 3),
        obfuscated_ssim=_mean(ssim(obfuscated, victims)),
        thumbnail_ssim=_mean(ssim(thumb, victims)),
        learned_ssim=learned_ssim,
        learned_steps=steps,
        learned_seconds=seconds,
    )


def closest(reference: OperatingPointRow, candidates: Sequence[OperatingPointRow]) -> OperatingPointRow:
    """The candidate nearest ``reference`` in (obfuscated, thumbnail, learned) SSIM: Euclidean over the scores
    both rows have (the learned attack's only when both were attacked)."""

    def scores(row: OperatingPointRow) -> list[float | None]:
        return [row.obfuscated_ssim, row.thumbnail_ssim, row.learned_ssim]

    def distance(row: OperatingPointRow) -> float:
        pairs = [(a, b) for a, b in zip(scores(reference), scores(row)) if a is not None and b is not None]
        return math.sqrt(sum((a - b) ** 2 for a, b in pairs))

    if not candidates:
        raise ValueError("no candidate settings to compare with: pass at least one native setting")
    return min(candidates, key=distance)
