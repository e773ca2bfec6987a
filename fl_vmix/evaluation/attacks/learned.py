"""Learned de-obfuscation (adversary A2 under Kerckhoffs's principle): train a network to undo the method.

What the attacker knows: the obfuscation algorithm and all its public settings (region size, block
sizes, VFE target, mode, ...), and clear public images from the victims' distribution (a split
disjoint from the victims). What it does not know: the victim's key. So it obfuscates the public
images itself, under many keys of its own (a fresh key for every chunk of images and every epoch, so
the network cannot learn any one key), trains a reconstruction network on (obfuscated -> clear) pairs,
and applies it to the victims' obfuscated images. This is how InstaHide and NeuraCrypt were broken
(Carlini et al. 2021, 2022).

Network: a small U-Net (:class:`ReconstructionUNet`, about 0.5M parameters with the default widths)
whose input stacks the obfuscated image with what a within-region shuffle cannot hide
(:mod:`.regions`): each region's mean (broadcast and bilinearly interpolated between region centres),
``quantiles`` evenly spaced order statistics of each region and channel (broadcast), and each pixel's
position inside its region. For methods that do not shuffle (blur, mosaic, pixel noise) these are
just extra summaries of the obfuscated image.

Output head (``head``):

* ``"quantile"``: the network predicts, per pixel and channel, a rank in (0, 1) and the pixel takes
  the region's value at that rank (linear interpolation of the region's sorted values). Every output
  value is then one the region really holds, with the region's exact contrast; the network only has
  to decide which pixel is bright and which dark. Valid when the method keeps each region's
  per-channel values (VisualMixer, block shuffle without channel permutation).
* ``"direct"``: the network predicts a correction to the bilinear region-mean thumbnail.
* ``"auto"`` (default): ``"quantile"`` if, on the first training chunk, the obfuscation kept every
  region's per-channel sorted values (the attacker checks this on its own images), else ``"direct"``.

Loss: ``L1 + ssim_weight * (1 - SSIM)`` (SSIM with the standard 11-px Gaussian window, as the scores).
Training is seedable and respects a wall-clock budget: the learning rate follows a warm-up plus cosine
schedule over ``progress = max(step / planned steps, elapsed / budget)``, so a run cut by the budget
still ends annealed (with a budget, the number of steps, hence the result, depends on the machine's
speed; without one, a seeded run is reproducible).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from fl_vmix.evaluation.attacks.recognition import recognition_accuracy
from fl_vmix.evaluation.attacks.regions import (
    broadcast_regions,
    check_region_size,
    region_position,
    region_quantiles,
    region_sorted,
    thumbnail,
)
from fl_vmix.privacy.similarity import PSNR_CAP, psnr, ssim

logger = logging.getLogger("fl_vmix.attacks")

Obfuscation = Callable[[Tensor, Tensor, int], Tensor]
MethodFactory = Callable[[bytes], Obfuscation]
Head = Literal["auto", "direct", "quantile"]


def attacker_key(seed: int, *fields: object) -> bytes:
    """A 32-byte key of the attacker's own, reproducible from ``seed`` and ``fields`` (never the victim's)."""
    return hashlib.sha256("\x1f".join(["fl_vmix-learned-attack", str(seed), *map(str, fields)]).encode()).digest()


def keyed_method_factory(name: str, **params: Any) -> MethodFactory:
    """``key -> method`` for a registered privacy method, with everything but the key fixed (public).

    Keyed methods (the shuffles, the noise baselines) get the key; key-less methods (blur, mosaic)
    ignore it. Public settings such as the noise baselines' ``run`` are ordinary ``params``.
    """
    from fl_vmix.privacy.methods import PRIVACY_METHODS, build_privacy_method, method_parameters

    cls = PRIVACY_METHODS.get(name)
    if cls is None:
        raise ValueError(f"unknown privacy method {name!r}; valid names: {sorted(PRIVACY_METHODS)}")
    if cls.level != "image":
        raise ValueError(f"{name!r} protects training, not images: the learned attack needs an image-level method")
    if "key" in params:
        raise ValueError("pass no key: the factory supplies the attacker's (or the victim's) own")
    keyed = "key" in method_parameters(name)

    def build(key: bytes) -> Obfuscation:
        return build_privacy_method(name, key=key, **params) if keyed else build_privacy_method(name, **params)

    return build


# ----------------------------------------------------------------------------------------------- features
def attack_features(obfuscated: Tensor, region_size: int, quantiles: int) -> Tensor:
    """Network input ``[B, C * (quantiles + 3) + 2, H, W]``: the obfuscated image, its bilinear and
    nearest region-mean images, the region quantiles (broadcast) and the position inside the region."""
    rows, cols = check_region_size(obfuscated, region_size)
    b, c, h, w = obfuscated.shape
    q = region_quantiles(obfuscated, region_size, quantiles).reshape(b, c * quantiles, rows, cols)
    position = region_position(h, w, region_size, obfuscated.device).to(obfuscated.dtype).expand(b, 2, h, w)
    return torch.cat(
        [
            obfuscated,
            thumbnail(obfuscated, region_size, "bilinear"),
            thumbnail(obfuscated, region_size, "nearest"),
            broadcast_regions(q, region_size, (h, w)),
            position,
        ],
        dim=1,
    )


def feature_channels(channels: int, quantiles: int) -> int:
    return channels * (quantiles + 3) + 2


def keeps_region_values(clear: Tensor, obfuscated: Tensor, region_size: int, atol: float = 1e-6) -> bool:
    """Whether the obfuscation kept every region's per-channel multiset of values (a within-region shuffle)."""
    if clear.shape != obfuscated.shape:
        return False
    a, _ = region_sorted(clear, region_size)
    b, _ = region_sorted(obfuscated, region_size)
    finite = torch.isfinite(a)
    return bool(torch.equal(finite, torch.isfinite(b)) and torch.allclose(a[finite], b[finite], atol=atol))


def quantile_lookup(rank: Tensor, obfuscated: Tensor, region_size: int) -> Tensor:
    """Each pixel takes its region's (same channel) value at ``rank`` in (0, 1), linearly interpolated
    between the region's sorted values: min at 0, max at 1. Differentiable in ``rank``."""
    values, counts = region_sorted(obfuscated, region_size)
    b, c, ry, rx, n = values.shape
    h, w = obfuscated.shape[-2:]
    region_of_pixel = broadcast_regions(torch.arange(ry * rx, device=rank.device).view(ry, rx), region_size, (h, w))
    count = broadcast_regions(counts, region_size, (h, w)).to(rank.dtype)
    pos = rank * (count - 1)
    low = torch.minimum(pos.detach().floor(), (count - 2).clamp(min=0))
    frac = pos - low
    base = (region_of_pixel * n).view(1, 1, h, w) + low.long()
    high = base + (count.long() > 1).long()
    flat = values.reshape(b, c, ry * rx * n)
    v_low = flat.gather(2, base.reshape(b, c, h * w)).view(b, c, h, w)
    v_high = flat.gather(2, high.reshape(b, c, h * w)).view(b, c, h, w)
    return v_low + frac * (v_high - v_low)


# ------------------------------------------------------------------------------------------------ network
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ReconstructionUNet(nn.Module):
    """A small U-Net: ``len(widths)`` levels (2x max-pool down, bilinear up, skip concatenation),
    two 3x3 conv + BatchNorm + ReLU per level, a 1x1 output. Any input size (odd sides included)."""

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or any(w < 1 for w in widths):
            raise ValueError(
                f"widths must be positive channel counts, one per level, got {widths!r}; e.g. (32, 64, 128)"
            )
        self.down = nn.ModuleList(_block(cin, cout) for cin, cout in zip((in_channels, *widths[:-1]), widths))
        self.lift = nn.ModuleList(nn.Conv2d(deep, shallow, 1) for deep, shallow in zip(widths[:0:-1], widths[-2::-1]))
        self.up = nn.ModuleList(_block(2 * shallow, shallow) for shallow in widths[-2::-1])
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        for lift, block, skip in zip(self.lift, self.up, reversed(skips[:-1])):
            x = F.interpolate(lift(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)


# ------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LearnedAttackConfig:
    """Settings of the learned attack. ``region_size`` is the method's public region (or cell) size."""

    region_size: int = 8
    quantiles: int = 16
    widths: tuple[int, ...] = (32, 64, 128)
    head: Head = "auto"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.03
    ssim_weight: float = 1.0
    chunk_size: int = 1250  # public images obfuscated under one attacker key
    flip: bool = True  # random horizontal flips of the public images before obfuscation
    validation_images: int = 256
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cpu"
    log_every: int = 100

    def __post_init__(self) -> None:
        for name in ("region_size", "quantiles", "epochs", "batch_size", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "quantiles" else 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.head not in ("auto", "direct", "quantile"):
            raise ValueError(f"head must be 'auto', 'direct' or 'quantile', got {self.head!r}")
        if not (self.lr > 0 and 0 <= self.warmup < 1 and self.ssim_weight >= 0):
            raise ValueError(
                f"need lr > 0, 0 <= warmup < 1, ssim_weight >= 0; got {self.lr}, {self.warmup}, {self.ssim_weight}"
            )
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be positive seconds or None, got {self.time_budget_s}")
        if self.validation_images < 0:
            raise ValueError(f"validation_images must be >= 0, got {self.validation_images}")


@dataclass(frozen=True)
class TrainingHistory:
    """How training went: steps, time, whether the budget stopped it, and the learning curve."""

    steps: int
    epochs_completed: float
    seconds: float
    stopped_by_budget: bool
    keys_used: int
    head: str
    parameters: int
    train_loss: tuple[float, ...]  # mean loss per ``log_every`` steps
    validation_ssim: tuple[float, ...]  # after each epoch (and at the end), on held-out public images


class LearnedDeobfuscator(nn.Module):
    """A trained reconstruction network plus what it needs to run: ``reconstruct(obfuscated) -> images``."""

    def __init__(self, config: LearnedAttackConfig, channels: int, head: Literal["direct", "quantile"]) -> None:
        super().__init__()
        self.config, self.channels, self.head = config, channels, head
        self.net = ReconstructionUNet(feature_channels(channels, config.quantiles), channels, config.widths)

    def forward(self, obfuscated: Tensor) -> Tensor:
        out = self.net(attack_features(obfuscated, self.config.region_size, self.config.quantiles))
        if self.head == "quantile":
            return quantile_lookup(torch.sigmoid(out), obfuscated, self.config.region_size)
        return (thumbnail(obfuscated, self.config.region_size, "bilinear") + out).clamp(0, 1)

    def save(self, path: str | Path) -> Path:
        """Write the weights and everything :meth:`load` needs to rebuild the network."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.__dict__.items()}
        torch.save(
            {"config": config, "channels": self.channels, "head": self.head, "state_dict": self.state_dict()}, out
        )
        return out

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> LearnedDeobfuscator:
        saved = torch.load(Path(path), map_location=map_location, weights_only=True)
        config = LearnedAttackConfig(**{**saved["config"], "widths": tuple(saved["config"]["widths"])})
        model = cls(config, int(saved["channels"]), saved["head"])
        model.load_state_dict(saved["state_dict"])
        return model.eval()

    @torch.no_grad()
    def reconstruct(self, obfuscated: Tensor, batch_size: int = 256) -> Tensor:
        """Reconstructions ``[N, C, H, W]`` in [0, 1] on the CPU of obfuscated images (float in [0, 1])."""
        obfuscated = _as_float_images(obfuscated, "obfuscated")
        if obfuscated.shape[1] != self.channels:
            raise ValueError(
                f"the network was trained on {self.channels}-channel images, got {obfuscated.shape[1]} channels"
            )
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            parts = [
                self(obfuscated[i : i + batch_size].to(device)).cpu() for i in range(0, obfuscated.shape[0], batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(parts).clamp(0, 1)


def _as_float_images(images: Tensor | np.ndarray, name: str) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, C, H, W] tensor or array, got {getattr(x, 'shape', type(x))}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got {x.dtype}")
    if float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [0, 1]: undo any normalisation first")
    return x.float()


def _loss(recon: Tensor, clear: Tensor, ssim_weight: float) -> Tensor:
    loss = (recon - clear).abs().mean()
    if ssim_weight:
        similarity = structural_similarity_index_measure(recon, clear, data_range=1.0)
        assert isinstance(similarity, Tensor)  # no full image or contrast requested
        loss = loss + ssim_weight * (1 - similarity)
    return loss


# ------------------------------------------------------------------------------------------------ training
def train_deobfuscator(
    public_images: Tensor | np.ndarray,
    method_factory: MethodFactory,
    config: LearnedAttackConfig = LearnedAttackConfig(),
    *,
    public_ids: Tensor | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> tuple[LearnedDeobfuscator, TrainingHistory]:
    """Train the reconstruction network on public images obfuscated under the attacker's own keys.

    Args:
        public_images: clear images the attacker holds, ``[N, C, H, W]`` uint8 or float in [0, 1]
            (disjoint from the victims'). ``config.validation_images`` random ones (at most a fifth) are
            held out, obfuscated under one more attacker key, to report the validation SSIM per epoch.
        method_factory: ``key -> method`` with the victims' public settings (:func:`keyed_method_factory`);
            ``method(images, sample_ids, epoch)`` must return the obfuscated batch. A fresh 32-byte
            attacker key is used for every chunk of ``config.chunk_size`` images in every epoch.
        public_ids: sample ids passed to the method (default ``0..N-1``).
        progress: called every ``log_every`` steps and after each epoch with a dict of numbers.
    """
    start = time.perf_counter()
    clear_all = _as_float_images(public_images, "public_images")
    n_total = clear_all.shape[0]
    check_region_size(clear_all[:1], config.region_size)
    ids_all = (
        torch.arange(n_total, dtype=torch.int64)
        if public_ids is None
        else torch.as_tensor(public_ids, dtype=torch.int64)
    )
    if ids_all.shape != (n_total,):
        raise ValueError(f"public_ids must be [N] = [{n_total}], got {tuple(ids_all.shape)}")
    n_val = min(config.validation_images, n_total // 5)
    n_train = n_total - n_val
    if n_train < config.batch_size:
        raise ValueError(
            f"{n_train} training images are fewer than one batch ({config.batch_size}): pass more public images"
        )
    device = torch.device(config.device)
    g = torch.Generator().manual_seed(config.seed)
    split = torch.randperm(n_total, generator=g)  # random hold-out: datasets are often sorted by class
    train_idx, val_idx = split[:n_train], split[n_train:]

    def obfuscate(clear: Tensor, ids: Tensor, epoch: int, *fields: object) -> Tensor:
        out = method_factory(attacker_key(config.seed, *fields))(clear, ids, epoch)
        if not isinstance(out, Tensor) or out.shape != clear.shape:
            raise ValueError(
                f"method returned {getattr(out, 'shape', type(out))}, expected the input shape {tuple(clear.shape)}"
            )
        return out.detach().float()

    val_clear, val_obf = clear_all[val_idx], None
    if n_val:
        val_obf = obfuscate(val_clear, ids_all[val_idx], 0, "validation")
    head = config.head
    if head == "auto":
        probe = train_idx[:256]
        obf_probe = obfuscate(clear_all[probe], ids_all[probe], 0, "probe")
        head = "quantile" if keeps_region_values(clear_all[probe], obf_probe, config.region_size) else "direct"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LearnedDeobfuscator(config, clear_all.shape[1], head).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = sum(
        -(-min(config.chunk_size, n_train - i) // config.batch_size) for i in range(0, n_train, config.chunk_size)
    )
    planned = steps_per_epoch * config.epochs
    step, keys, losses, window, val_curve, stopped = 0, 0, [], [], [], False

    def fraction() -> float:
        done = step / planned
        if config.time_budget_s is not None:
            done = max(done, (time.perf_counter() - start) / config.time_budget_s)
        return done

    def validate() -> float:
        if val_obf is None:
            return float("nan")
        value = float(ssim(model.reconstruct(val_obf), val_clear).mean())
        val_curve.append(value)
        return value

    for epoch in range(config.epochs):
        order = train_idx[torch.randperm(n_train, generator=g)]
        for c0 in range(0, n_train, config.chunk_size):
            pick = order[c0 : c0 + config.chunk_size]
            clear = clear_all[pick]
            if config.flip:
                flip = torch.rand(pick.numel(), generator=g) < 0.5
                clear = torch.where(flip.view(-1, 1, 1, 1), clear.flip(-1), clear)
            obf = obfuscate(clear, ids_all[pick], epoch, "train", epoch, c0)
            keys += 1
            model.train()
            inner = torch.randperm(pick.numel(), generator=g)
            for b0 in range(0, pick.numel(), config.batch_size):
                done = fraction()
                if done >= 1:
                    stopped = step < planned
                    break
                lr = config.lr * (
                    done / config.warmup
                    if done < config.warmup
                    else 0.5 * (1 + math.cos(math.pi * (done - config.warmup) / (1 - config.warmup)))
                )
                for group in optimiser.param_groups:
                    group["lr"] = lr
                idx = inner[b0 : b0 + config.batch_size]
                x, y = obf[idx].to(device), clear[idx].to(device)
                loss = _loss(model(x), y, config.ssim_weight)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                step += 1
                window.append(float(loss.detach()))
                if len(window) == config.log_every:
                    losses.append(sum(window) / len(window))
                    window = []
                    report = {
                        "step": step,
                        "epoch": epoch,
                        "loss": losses[-1],
                        "lr": lr,
                        "seconds": time.perf_counter() - start,
                    }
                    logger.info("learned attack: %s", report)
                    if progress is not None:
                        progress(report)
            if fraction() >= 1:
                stopped = stopped or step < planned
                break
        val = validate()
        report = {"step": step, "epoch": epoch + 1, "validation_ssim": val, "seconds": time.perf_counter() - start}
        logger.info("learned attack: %s", report)
        if progress is not None:
            progress(report)
        if stopped or fraction() >= 1:
            break
    if window:
        losses.append(sum(window) / len(window))
    model.eval()
    history = TrainingHistory(
        steps=step,
        epochs_completed=step / steps_per_epoch,
        seconds=time.perf_counter() - start,
        stopped_by_budget=stopped,
        keys_used=keys,
        head=head,
        parameters=sum(p.numel() for p in model.net.parameters()),
        train_loss=tuple(losses),
        validation_ssim=tuple(val_curve),
    )
    return model, history


# ----------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class LearnedAttackResult:
    """Scores of the learned attack on victim images (means over ``n`` images; PSNR capped at 100 dB).

    ``thumbnail_*``: the bilinear region-mean image of the obfuscated input (what any within-region
    shuffle leaks with no learning); ``obfuscated_*``: the obfuscated image itself. ``recognition_*``:
    accuracy of a supplied clear-trained classifier on the reconstructions / obfuscated / clear images
    (``None`` without a classifier), next to ``chance``.
    """

    n: int
    ssim_to_clear: float
    psnr_to_clear: float
    thumbnail_ssim: float
    thumbnail_psnr: float
    obfuscated_ssim: float
    obfuscated_psnr: float
    recognition_reconstructed: float | None = None
    recognition_obfuscated: float | None = None
    recognition_clear: float | None = None
    chance: float | None = None
    per_image_ssim: tuple[float, ...] = field(default=(), repr=False)

    def summary(self) -> dict[str, float | int | None]:
        return {k: v for k, v in self.__dict__.items() if k != "per_image_ssim"}


def _mean(values: Tensor) -> float:
    return float(values.double().clamp(max=PSNR_CAP).mean())


def score_learned_attack(
    reconstructed: Tensor,
    clear: Tensor,
    obfuscated: Tensor,
    region_size: int,
    *,
    classifier: nn.Module | None = None,
    labels: Tensor | None = None,
    input_transform: Callable[[Tensor], Tensor] | None = None,
) -> LearnedAttackResult:
    """SSIM/PSNR of the reconstructions to the clear images next to the two baselines, and optionally the
    accuracy of a clear-trained ``classifier`` (with its ``input_transform``) on each version."""
    clear = _as_float_images(clear, "clear")
    if reconstructed.shape != clear.shape or obfuscated.shape != clear.shape:
        raise ValueError(
            f"reconstructed {tuple(reconstructed.shape)}, clear {tuple(clear.shape)} and obfuscated "
            f"{tuple(obfuscated.shape)} must have the same shape, image i of each being the same victim"
        )
    thumb = thumbnail(obfuscated, region_size, "bilinear").clamp(0, 1)
    per_image = ssim(reconstructed, clear)
    scores: dict[str, Any] = {
        "n": clear.shape[0],
        "ssim_to_clear": _mean(per_image),
        "psnr_to_clear": _mean(psnr(reconstructed, clear)),
        "thumbnail_ssim": _mean(ssim(thumb, clear)),
        "thumbnail_psnr": _mean(psnr(thumb, clear)),
        "obfuscated_ssim": _mean(ssim(obfuscated, clear)),
        "obfuscated_psnr": _mean(psnr(obfuscated, clear)),
        "per_image_ssim": tuple(per_image.tolist()),
    }
    if classifier is not None:
        if labels is None:
            raise ValueError("labels are needed to score the classifier; pass the victims' labels")
        for name, images in (("reconstructed", reconstructed), ("obfuscated", obfuscated), ("clear", clear)):
            out = recognition_accuracy(classifier, images, labels, input_transform=input_transform)
            scores[f"recognition_{name}"] = out["accuracy"]
            scores["chance"] = out["chance"]
    return LearnedAttackResult(**scores)
