"""The contract every image privacy method follows, and what a protected batch carries back.

A method is called on a batch, ``method.protect(images, sample_ids, epoch)`` with ``images`` float
``[B, C, H, W]`` in [0, 1], and returns a :class:`ProtectedBatch`: the protected images of the same
shape and dtype, plus what the method can say about them (VisualMixer: how many images stayed below
the VFE target, and the shuffle parameters the key holder needs to invert it). ``method(images,
sample_ids, epoch)`` returns only the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from fl_vmix.privacy.keyed import check_dataset
from fl_vmix.privacy.mixer import MixParams, MixReport


def check_batch(images: Any, sample_ids: Any, epoch: Any) -> None:
    """The call contract shared by all methods: [B,C,H,W] floats in [0,1], [B] integer ids, integer epoch."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a float tensor [B, C, H, W], got {got}; convert uint8 images with x.float() / 255"
        )
    if images.numel() > 0:
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"images have values in [{lo:.4g}, {hi:.4g}] but must lie in [0, 1]; apply privacy methods before "
                "mean/std normalisation"
            )
    if (
        not isinstance(sample_ids, Tensor)
        or sample_ids.shape != (images.shape[0],)
        or sample_ids.is_floating_point()
        or sample_ids.is_complex()
        or sample_ids.dtype == torch.bool
    ):
        got = f"{tuple(sample_ids.shape)} {sample_ids.dtype}" if isinstance(sample_ids, Tensor) else repr(sample_ids)
        raise ValueError(
            f"sample_ids must be an integer tensor of shape [{images.shape[0]}] (one id per image), got {got}; "
            "pass the dataset index of each image as torch.int64"
        )
    if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool):
        raise ValueError(f"epoch must be an integer, got {epoch!r}; pass the current training epoch (0 if unused)")


@dataclass(frozen=True)
class ProtectedBatch:
    """A protected batch and what the method reports about it.

    ``report``: VisualMixer's VFE report (clear, target and achieved VFE per image, and which images
    reached the target); ``None`` for methods without a target. ``params``: VisualMixer's shuffle
    parameters (per-region levels), which only the key holder can use; ``None`` otherwise.
    """

    images: Tensor
    report: MixReport | None = None
    params: MixParams | None = None

    @property
    def num_unreached(self) -> int:
        """Images whose VFE target was out of reach (the method used its finest setting); 0 without a target."""
        return self.report.num_unreached if self.report is not None else 0


class PrivacyMethod:
    """Base class of an image privacy method; subclasses implement :meth:`_apply` (or :meth:`_protect`).

    Subclasses set ``name`` (the registry name, a class attribute), ``self.params`` (constructor
    arguments, so the method can be rebuilt by name) and ``self.epsilon`` in ``__init__``.
    :meth:`protect` validates the batch, so ``_apply`` can assume the contract.
    """

    name: ClassVar[str] = ""
    level: ClassVar[Literal["image", "training"]] = "image"
    params: dict[str, Any]
    epsilon: float | None = None
    delta: float | None = None
    # What one epsilon protects: "value" (one colour value of one pixel), "N values", "pixel", "image",
    # "example" (one training example, DP-SGD) or "client" (one client's data, central DP); None: not DP.
    epsilon_unit: str | None = None

    def epsilon_for(self, values: int, epochs: int = 1) -> float | None:
        """For image-level DP: the epsilon the same noise gives neighbours that differ in ``values`` values of
        ``[C, H, W]`` (``C`` for one whole pixel, ``C * H * W`` for a whole image), after ``epochs`` epochs.
        None for methods without an image-level guarantee."""
        return None

    def protect(self, images: Tensor, sample_ids: Tensor, epoch: int = 0, dataset: str | None = None) -> ProtectedBatch:
        """Protect a batch: ``[B, C, H, W]`` floats in [0, 1] -> the same shape and dtype, in [0, 1], with a report.

        ``dataset``: the public name of the data the ids index (``DatasetIdentity.token``); keyed methods bind
        it into their randomness, so the same id in two datasets or splits never shares a permutation or noise.
        """
        check_batch(images, sample_ids, epoch)
        check_dataset(dataset)
        return self._protect(images, sample_ids, int(epoch), dataset)

    def __call__(self, images: Tensor, sample_ids: Tensor, epoch: int = 0, dataset: str | None = None) -> Tensor:
        return self.protect(images, sample_ids, epoch, dataset).images

    def _protect(self, images: Tensor, sample_ids: Tensor, epoch: int, dataset: str | None) -> ProtectedBatch:
        # Methods without keyed randomness ignore the dataset; keyed ones override _protect to bind it.
        return ProtectedBatch(self._apply(images, sample_ids, epoch))

    def _apply(self, images: Tensor, sample_ids: Tensor, epoch: int) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _apply(images, sample_ids, epoch)")

    def total_epsilon(self, epochs: int) -> float | None:
        """Epsilon of everything derived from ``epochs`` epochs of protected images (None: not DP).

        Equal to ``epsilon`` unless each epoch re-releases an image with fresh noise (``noise_mode="dynamic"``).
        """
        return self.epsilon

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})  # name={self.name!r}, epsilon={self.epsilon}, delta={self.delta}"


class TrainingLevelMethod(PrivacyMethod):
    """A method whose protection happens in training (DP-SGD, central DP): identity on images.

    ``epsilon``/``delta`` start as ``None``; the accountant that runs with training reports epsilon.
    """

    level: ClassVar[Literal["image", "training"]] = "training"

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)
        self.epsilon = None
        self.delta = None

    def _apply(self, images: Tensor, sample_ids: Tensor, epoch: int) -> Tensor:
        return images
