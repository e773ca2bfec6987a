"""Image privacy methods applied on each federated client, compared against VisualMixer (project issue #5).

Every method is a small class registered under a name in ONE registry,
:data:`fl_vmix.privacy.methods.PRIVACY_METHODS`, and built with
:func:`~fl_vmix.privacy.methods.build_privacy_method`.  A method instance is called on a batch::

    out = method(images, sample_ids, epoch)   # images [B, C, H, W] float in [0, 1], sample_ids [B] integer

and returns a tensor of the same shape and dtype, in [0, 1].  Each instance exposes ``name``, ``params`` (the
constructor arguments, so ``build_privacy_method(m.name, **m.params)`` rebuilds it), ``epsilon`` (the per-image
privacy parameter it guarantees, ``None`` where the method is not differentially private), ``delta`` (``None``
for pure DP and non-DP methods) and ``level`` (``"image"``: the transform is the protection; ``"training"``:
the transform is the identity and the guarantee comes from training, e.g. DP-SGD).

Neighbourhood (what epsilon protects).  All DP methods here use the same, explicit notion: two images are
*m-neighbours* if they differ in at most ``m`` entries of the ``[C, H, W]`` array (one entry = one colour channel
of one pixel), each entry in [0, 1].  Hence the sensitivities ``Delta1 = m`` and ``Delta2 = sqrt(m)``.

* ``m = 1`` (default) protects a single pixel value: the weakest, "per-pixel" guarantee, and the one the
  pixel-DP literature usually reports.  For an RGB image, protecting one whole pixel needs ``m = 3``.
* ``m = C * H * W`` is image-level DP (any two images are neighbours).  Expect huge epsilons for images that stay
  useful (Gaussian sigma 0.1 on 3 x 32 x 32 gives epsilon ~1.6e5 at delta 1e-5): the honest price of local DP on
  raw pixels.

Randomness.  Noise comes from the client's keyed PRF (:func:`fl_vmix.privacy.noise.per_sample_noise`): a pure
function of (key, the mechanism: kind and effective noise scale, the dataset the ids index, the image shape, epoch,
sample id, position), secret to the client. Nothing public (no run seed) enters it: whoever could regenerate the
noise could subtract it. Because it is deterministic, releasing the same image of the same dataset again with the
same mechanism gives the same release (averaging releases gains nothing, so epsilon holds across runs), and two
images, datasets, shapes or mechanisms never share noise (shared noise cancels in a difference).

* ``noise_mode="static"`` (default) ignores the epoch: an image is released once, with one noise draw, and
  ``epsilon`` holds for the whole training run.  ``"dynamic"`` draws fresh noise every epoch; each epoch is then
  a new release and the guarantee composes (``method.total_epsilon(epochs)``).
* Units: ``epsilon`` is for the method's own ``m`` (``epsilon_unit``: "value" for m = 1); :meth:`epsilon_for`
  gives the epsilon of the same noise for one whole pixel (``values=C``) or a whole image (``values=C*H*W``).
  Epsilons here are for one image under local DP (per client, before training); a DP-SGD epsilon is per training
  example and a central-DP epsilon per client: the units differ, and reports print them.

The registry lives in :mod:`fl_vmix.privacy.methods`, with VisualMixer and the plain block shuffle
(:mod:`fl_vmix.privacy.shuffle`) and the training-level methods (:mod:`fl_vmix.privacy.training_level`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_vmix.privacy.base import PrivacyMethod, ProtectedBatch
from fl_vmix.privacy.calibration import gaussian_epsilon, gaussian_sigma
from fl_vmix.privacy.checks import check_epsilon, check_int, check_positive
from fl_vmix.privacy.keyed import KeyedPRF, check_key, context_bytes
from fl_vmix.privacy.noise import NoiseKind, per_sample_noise

__all__ = ["DPPix", "GaussianBlur", "Identity", "Mosaic", "PixelDPGaussian", "PixelDPLaplace", "cell_means", "pixelate"]

# --------------------------------------------------------------------------------------------------------------
# Pixelisation (pure functions)
# --------------------------------------------------------------------------------------------------------------


def cell_means(images: Tensor, cell: int) -> tuple[Tensor, Tensor]:
    """Mean of each ``cell x cell`` cell per channel, ``[B, C, ceil(H/cell), ceil(W/cell)]``, and pixel counts.

    Cells on the bottom/right edge may be partial when H or W is not a multiple of ``cell``; they average only
    their own pixels, and ``counts[i, j]`` (shape ``[ceil(H/cell), ceil(W/cell)]``) says how many that is.
    """
    check_int("cell", cell, 1, "use a cell size of at least 1 px")
    h, w = images.shape[-2:]
    pad = (0, (-w) % cell, 0, (-h) % cell)
    sums = F.avg_pool2d(F.pad(images, pad), cell, stride=cell, divisor_override=1)
    ones = F.pad(torch.ones(1, 1, h, w, dtype=images.dtype, device=images.device), pad)
    counts = F.avg_pool2d(ones, cell, stride=cell, divisor_override=1)[0, 0]
    return sums / counts, counts


def _expand_cells(cells: Tensor, cell: int, size: tuple[int, int]) -> Tensor:
    """Broadcast per-cell values back to pixels and crop the padding of partial cells."""
    return cells.repeat_interleave(cell, dim=-2).repeat_interleave(cell, dim=-1)[..., : size[0], : size[1]]


def pixelate(images: Tensor, cell: int) -> Tensor:
    """Replace every pixel by the mean of its ``cell x cell`` cell (per channel); same shape as ``images``."""
    means, _ = cell_means(images, cell)
    return _expand_cells(means, cell, (images.shape[-2], images.shape[-1]))


# --------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------


class Identity(PrivacyMethod):
    """No protection: returns the input tensor itself (no copy). The accuracy upper bound."""

    name: ClassVar[str] = "none"

    def __init__(self) -> None:
        self.params = {}
        self.epsilon = None

    def _apply(self, images: Tensor, sample_ids: Tensor, epoch: int) -> Tensor:
        return images


def _resolve_budget(epsilon: Any, noise_scale: Any) -> None:
    if (epsilon is None) == (noise_scale is None):
        raise ValueError(
            f"pass exactly one of epsilon (budget; the noise is derived) or noise_scale (noise; the epsilon is "
            f"derived), got epsilon={epsilon!r}, noise_scale={noise_scale!r}"
        )


_NOISE_MODES = ("static", "dynamic")


class _NoisyMethod(PrivacyMethod):
    """Shared key / noise-mode handling of the noise-adding DP methods.

    ``key``: the client's secret (required; the noise comes from its PRF). ``noise_mode="static"`` (default): a
    sample's noise is the same every epoch: one release, and ``epsilon`` holds for the whole training run (and
    for every later run of the same mechanism on the same data under the same key: the noise is deterministic).
    ``noise_mode="dynamic"``: fresh noise every epoch (acts like augmentation), but each epoch is a new release of
    the image, so the guarantee composes: see :meth:`total_epsilon`.
    """

    def _init_noise(self, key: Any, noise_mode: Any) -> None:
        if noise_mode not in _NOISE_MODES:
            raise ValueError(
                f"noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}; use 'static' (same noise every "
                "epoch, epsilon holds for the whole run) or 'dynamic' (fresh noise per epoch, epsilon composes)"
            )
        self._key = check_key(key, owner=type(self).__name__)
        self.noise_mode = noise_mode
        self._prfs: dict[tuple[str | None, tuple[int, ...]], KeyedPRF] = {}

    def _mechanism(self) -> tuple[object, ...]:
        """What the output depends on besides the key, the image and its identity: the noise kind and its
        effective scale. Settings that only change the claimed epsilon (delta, calibration) do not enter, so
        two methods that add the same noise distribution release the same image identically."""
        raise NotImplementedError

    def _bind_noise(self) -> None:
        """Set the unit of epsilon (call once ``params`` is set)."""
        m = self.params["m"]  # every noise method has m: how many values neighbouring images differ in
        self.epsilon_unit = "value" if m == 1 else f"{m} values"

    def _prf(self, dataset: str | None, image_shape: tuple[int, ...]) -> KeyedPRF:
        """The PRF of one (dataset, image shape): its context binds them with the mechanism, so noise of two
        datasets, shapes or mechanisms is unrelated (the counter adds sample id, epoch and position)."""
        if (dataset, image_shape) not in self._prfs:
            context = context_bytes("image-noise.v3", self.name, self._mechanism(), dataset, image_shape)
            self._prfs[dataset, image_shape] = KeyedPRF(self._key, context)
        return self._prfs[dataset, image_shape]

    def _noise(
        self,
        images: Tensor,
        sample_ids: Tensor,
        epoch: int,
        dataset: str | None,
        shape: tuple[int, ...],
        kind: NoiseKind,
    ) -> Tensor:
        return per_sample_noise(
            sample_ids,
            shape,
            prf=self._prf(dataset, tuple(int(n) for n in images.shape[1:])),
            epoch=epoch if self.noise_mode == "dynamic" else 0,
            kind=kind,
            dtype=images.dtype,
            device=images.device,
        )

    def _protect(self, images: Tensor, sample_ids: Tensor, epoch: int, dataset: str | None) -> ProtectedBatch:
        return ProtectedBatch(self._noisy(images, sample_ids, epoch, dataset))

    def _noisy(self, images: Tensor, sample_ids: Tensor, epoch: int, dataset: str | None) -> Tensor:
        raise NotImplementedError

    def _releases(self, epochs: int) -> int:
        check_int("epochs", epochs, 1, "pass how many epochs the client trained on the noisy images")
        return epochs if self.noise_mode == "dynamic" else 1

    def total_epsilon(self, epochs: int) -> float:
        """``epsilon`` in static mode; in dynamic mode the composition of ``epochs`` independent releases."""
        assert self.epsilon is not None
        if self._releases(epochs) == 1:
            return self.epsilon
        return self.epsilon_for(int(self.params["m"]), epochs)  # type: ignore[return-value]


class PixelDPGaussian(_NoisyMethod):
    """Local (epsilon, delta)-DP on pixels: add N(0, sigma^2) to every pixel value, then clamp to [0, 1].

    Neighbourhood: images differing in at most ``m`` values of [C, H, W] (module docstring), so Delta2 = sqrt(m).
    ``sigma`` comes from ``epsilon`` via :func:`gaussian_sigma` (``calibration``: ``"analytic"`` Balle & Wang
    2018, default, valid for all epsilon; or ``"classical"`` sqrt(2 ln(1.25/delta)) Delta2 / epsilon, epsilon < 1),
    or give ``noise_scale`` (= sigma, in [0, 1] pixel units) and read the implied ``epsilon``.
    Clamping is post-processing, so it does not weaken the guarantee.  In ``"dynamic"`` noise mode, E epochs are
    E Gaussian releases, i.e. one Gaussian release with sigma / sqrt(E) (exact), see :meth:`total_epsilon`.
    """

    name: ClassVar[str] = "pixel_dp_gaussian"

    def __init__(
        self,
        epsilon: float | None = None,
        delta: float = 1e-5,
        m: int = 1,
        calibration: Literal["analytic", "classical"] = "analytic",
        noise_scale: float | None = None,
        key: bytes | None = None,
        noise_mode: Literal["static", "dynamic"] = "static",
    ) -> None:
        _resolve_budget(epsilon, noise_scale)
        check_int("m", m, 1, "m is how many pixel values may differ between neighbouring images (1 = one value)")
        self._init_noise(key, noise_mode)
        self.params = {
            "epsilon": epsilon,
            "delta": delta,
            "m": m,
            "calibration": calibration,
            "noise_scale": noise_scale,
            "noise_mode": noise_mode,
        }  # the key is deliberately not a reportable parameter
        self.sensitivity = math.sqrt(m)
        self.delta = delta
        kwargs: dict[str, Any] = {"delta": delta, "sensitivity": self.sensitivity, "calibration": calibration}
        if epsilon is not None:
            self.epsilon = float(epsilon)
            self.sigma = gaussian_sigma(epsilon=epsilon, **kwargs)
        else:
            self.epsilon = gaussian_epsilon(sigma=noise_scale, **kwargs)  # type: ignore[arg-type]
            self.sigma = float(noise_scale)  # type: ignore[arg-type]
        self._bind_noise()

    def _mechanism(self) -> tuple[object, ...]:
        return ("gaussian", float(self.sigma))

    def epsilon_for(self, values: int, epochs: int = 1) -> float:
        """E releases of Gaussian noise sigma are one release of sigma / sqrt(E) (exact); sensitivity sqrt(values)."""
        check_int("values", values, 1, "pass how many values of [C, H, W] neighbouring images differ in")
        return gaussian_epsilon(
            sigma=self.sigma / math.sqrt(self._releases(epochs)),
            delta=self.delta,  # type: ignore[arg-type]
            sensitivity=math.sqrt(values),
            calibration="analytic",
        )

    def _noisy(self, images: Tensor, sample_ids: Tensor, epoch: int, dataset: str | None) -> Tensor:
        noise = self._noise(images, sample_ids, epoch, dataset, tuple(images.shape[1:]), "gaussian")
        return (images + self.sigma * noise).clamp_(0.0, 1.0)


class PixelDPLaplace(_NoisyMethod):
    """Local epsilon-DP on pixels (pure DP): add Laplace(0, b) to every pixel value, b = Delta1 / epsilon.

    Neighbourhood: images differing in at most ``m`` values of [C, H, W], each value in [0, 1], so Delta1 = m
    (m = 1: b = 1/epsilon).  Alternatively give ``noise_scale`` (= b) and read ``epsilon = m / b``.
    """

    name: ClassVar[str] = "pixel_dp_laplace"

    def __init__(
        self,
        epsilon: float | None = None,
        m: int = 1,
        noise_scale: float | None = None,
        key: bytes | None = None,
        noise_mode: Literal["static", "dynamic"] = "static",
    ) -> None:
        _resolve_budget(epsilon, noise_scale)
        check_int("m", m, 1, "m is how many pixel values may differ between neighbouring images (1 = one value)")
        self._init_noise(key, noise_mode)
        self.params = {"epsilon": epsilon, "m": m, "noise_scale": noise_scale, "noise_mode": noise_mode}
        self.sensitivity = float(m)
        if epsilon is not None:
            check_epsilon(epsilon)
            self.epsilon = float(epsilon)
            self.scale = self.sensitivity / self.epsilon
        else:
            check_positive("noise_scale", noise_scale, "pass the Laplace scale b in [0, 1] pixel units")
            self.scale = float(noise_scale)  # type: ignore[arg-type]
            self.epsilon = self.sensitivity / self.scale
        self._bind_noise()

    def _mechanism(self) -> tuple[object, ...]:
        return ("laplace", float(self.scale))

    def epsilon_for(self, values: int, epochs: int = 1) -> float:
        """Laplace scale b on values in [0, 1]: L1 sensitivity ``values``, epsilon values / b per release."""
        check_int("values", values, 1, "pass how many values of [C, H, W] neighbouring images differ in")
        return self._releases(epochs) * values / self.scale

    def _noisy(self, images: Tensor, sample_ids: Tensor, epoch: int, dataset: str | None) -> Tensor:
        noise = self._noise(images, sample_ids, epoch, dataset, tuple(images.shape[1:]), "laplace")
        return (images + self.scale * noise).clamp_(0.0, 1.0)


class DPPix(_NoisyMethod):
    """DP-Pix (Fan 2018, "Image Pixelization with Differential Privacy"): pixelise, then add Laplace noise.

    Each ``b x b`` cell of each channel is replaced by its mean plus Laplace noise of scale ``m / (b^2 epsilon)``
    in [0, 1] units (the paper's 255 m / (b^2 epsilon) in [0, 255] units), then clamped to [0, 1].  Neighbourhood:
    images differing in at most ``m`` values of [C, H, W]; a value changes its cell mean by at most 1/b^2, so the
    cell means have L1 sensitivity m / b^2 and the release is epsilon-DP.  For grayscale this is the paper's
    m-neighbourhood exactly; for RGB, m counts channel values (m = 3 covers one whole pixel).

    Partial cells (H or W not a multiple of ``b``) average their own n < b^2 pixels and get Laplace scale
    ``m / (n epsilon)``: a value then moves its cell mean by up to 1/n, and scaling each cell's noise by its own
    1/n keeps the total privacy loss at most epsilon.
    """

    name: ClassVar[str] = "dp_pix"

    def __init__(
        self,
        epsilon: float = 1.0,
        b: int = 4,
        m: int = 1,
        key: bytes | None = None,
        noise_mode: Literal["static", "dynamic"] = "static",
    ) -> None:
        check_epsilon(epsilon)
        check_int("b", b, 1, "b is the cell side in pixels, e.g. b=4")
        check_int("m", m, 1, "m is how many pixel values may differ between neighbouring images (1 = one value)")
        self._init_noise(key, noise_mode)
        self.params = {"epsilon": epsilon, "b": b, "m": m, "noise_mode": noise_mode}
        self.epsilon = float(epsilon)
        self.b, self.m = b, m
        self.scale = m / (b * b * self.epsilon)  # Laplace scale of a full cell
        self._bind_noise()

    def _mechanism(self) -> tuple[object, ...]:
        # a cell of n pixels gets Laplace noise of scale m / (n epsilon): b and m / epsilon fix every cell's
        assert self.epsilon is not None  # set in __init__
        return ("dp_pix", self.b, self.m / self.epsilon)

    def epsilon_for(self, values: int, epochs: int = 1) -> float:
        """Each value moves its cell's mean by at most 1/n and that cell's noise has scale m / (n epsilon), so every
        value costs epsilon / m, full cell or partial: ``values`` values cost values * epsilon / m per release."""
        check_int("values", values, 1, "pass how many values of [C, H, W] neighbouring images differ in")
        return self._releases(epochs) * values / (self.b * self.b * self.scale)  # scale = m / (b^2 epsilon)

    def _noisy(self, images: Tensor, sample_ids: Tensor, epoch: int, dataset: str | None) -> Tensor:
        assert self.epsilon is not None  # set in __init__
        means, counts = cell_means(images, self.b)
        scale = self.m / (counts * self.epsilon)  # [h, w]; equals self.scale on full cells
        noisy = means + scale * self._noise(images, sample_ids, epoch, dataset, tuple(means.shape[1:]), "laplace")
        return _expand_cells(noisy, self.b, (images.shape[-2], images.shape[-1])).clamp_(0.0, 1.0)


class GaussianBlur(PrivacyMethod):
    """Gaussian blur (torchvision), a common non-DP obfuscation baseline; reflect padding at the borders."""

    name: ClassVar[str] = "gaussian_blur"

    def __init__(self, kernel_size: int = 7, sigma: float = 2.0) -> None:
        check_int("kernel_size", kernel_size, 1, "use an odd kernel size such as 7")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}; use {kernel_size + 1}")
        check_positive("sigma", sigma, "pass the blur standard deviation in pixels, e.g. sigma=2.0")
        self.params = {"kernel_size": kernel_size, "sigma": sigma}
        self.epsilon = None
        self.kernel_size, self.sigma = kernel_size, float(sigma)

    def _apply(self, images: Tensor, sample_ids: Tensor, epoch: int) -> Tensor:
        if self.kernel_size // 2 >= min(images.shape[-2:]):
            raise ValueError(
                f"kernel_size={self.kernel_size} is too large for {tuple(images.shape[-2:])} px images (reflect "
                f"padding needs kernel_size // 2 < side); use kernel_size <= {2 * min(images.shape[-2:]) - 1}"
            )
        import torchvision.transforms.v2.functional as TF  # torchvision imports torch._dynamo: seconds

        out = TF.gaussian_blur(images, [self.kernel_size, self.kernel_size], [self.sigma, self.sigma])
        return out.clamp_(0.0, 1.0)


class Mosaic(PrivacyMethod):
    """Pixelation without noise: every ``cell_size x cell_size`` cell becomes its per-channel mean (not DP)."""

    name: ClassVar[str] = "mosaic"

    def __init__(self, cell_size: int = 4) -> None:
        check_int("cell_size", cell_size, 1, "cell_size is the cell side in pixels, e.g. cell_size=4")
        self.params = {"cell_size": cell_size}
        self.epsilon = None
        self.cell_size = cell_size

    def _apply(self, images: Tensor, sample_ids: Tensor, epoch: int) -> Tensor:
        return pixelate(images, self.cell_size).clamp_(0.0, 1.0)
