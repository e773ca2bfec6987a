"""One registry of image privacy methods, selected by name (the Hydra ``privacy`` group).

A method is called on a batch, ``method(images, sample_ids, epoch)`` with ``images`` float
``[B, C, H, W]`` in [0, 1], and returns the protected batch. VisualMixer and the plain block shuffle
are registered here; the evaluation baselines (pixel DP, DP-Pix, blur, mosaic) and the training-level
methods (DP-SGD, central DP) register themselves in :mod:`fl_vmix.evaluation`. New methods extend the
registry with :func:`register_privacy_method` (as Opacus extends through small registries).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from fl_vmix.privacy.mixer import VisualMixer

# Modules that register further methods; imported on first lookup so the registry is complete.
_PROVIDERS = ("fl_vmix.evaluation.baselines", "fl_vmix.evaluation.training_dp")



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


class PrivacyMethod:
    """Base class of an image privacy method; subclasses implement :meth:`_apply` and set the attributes.

    Subclasses must set ``self.params`` (constructor arguments, so the method can be rebuilt by name) and
    ``self.epsilon`` in ``__init__``.  :meth:`__call__` validates the batch, so ``_apply`` can assume the contract.
    """

    name: ClassVar[str] = ""
    level: ClassVar[Literal["image", "training"]] = "image"
    params: dict[str, Any]
    epsilon: float | None = None
    delta: float | None = None

    def __call__(self, images: Tensor, sample_ids: Tensor, epoch: int = 0) -> Tensor:
        """Protect a batch: ``[B, C, H, W]`` floats in [0, 1] -> same shape and dtype, in [0, 1]."""
        check_batch(images, sample_ids, epoch)
        return self._apply(images, sample_ids, int(epoch))

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

    ``epsilon``/``delta`` start as ``None`` and are set by whoever runs the accountant once training is done.
    """

    level: ClassVar[Literal["image", "training"]] = "training"

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)
        self.epsilon = None
        self.delta = None

    def _apply(self, images: Tensor, sample_ids: Tensor, epoch: int) -> Tensor:
        return images


PRIVACY_METHODS: dict[str, type[PrivacyMethod]] = {}

_M = TypeVar("_M", bound=type[PrivacyMethod])


def register_privacy_method(name: str) -> Callable[[_M], _M]:
    """Class decorator: register a :class:`PrivacyMethod` subclass under ``name`` and set its ``name``."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(
            f"privacy method names must be lower_snake_case identifiers, got {name!r}; e.g. 'block_shuffle'"
        )

    def decorate(cls: _M) -> _M:
        if not (isinstance(cls, type) and issubclass(cls, PrivacyMethod)):
            raise ValueError(f"{cls!r} registered as {name!r} is not a PrivacyMethod subclass; inherit PrivacyMethod")
        existing = PRIVACY_METHODS.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"privacy method {name!r} is already registered to {existing.__module__}.{existing.__qualname__}; "
                "pick another name"
            )
        cls.name = name
        PRIVACY_METHODS[name] = cls
        return cls

    return decorate


def build_privacy_method(name: str, **params: Any) -> PrivacyMethod:
    """Build a registered method by name; unknown names or parameters raise ValueError listing the valid ones."""
    load_providers()
    try:
        cls = PRIVACY_METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown privacy method {name!r}; valid names: {sorted(PRIVACY_METHODS)}") from None
    signature = inspect.signature(cls)
    try:
        signature.bind(**params)
    except TypeError as err:
        accepted = [n for n, p in signature.parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        raise ValueError(
            f"bad parameters for privacy method {name!r} ({err}); accepted parameters: {accepted}"
        ) from None
    return cls(**params)




def load_providers() -> dict[str, type[PrivacyMethod]]:
    """Import the modules that register methods; returns the complete registry."""
    for module in _PROVIDERS:
        importlib.import_module(module)
    return PRIVACY_METHODS


@register_privacy_method("visualmixer")
class VisualMixerMethod(PrivacyMethod):
    """VisualMixer as a privacy method: keyed, VFE-targeted region shuffle (not DP: epsilon is None)."""

    def __init__(
        self,
        key: bytes | None = None,
        region_size: int = 8,
        block_sizes: Sequence[int] = (2, 1),
        target_ratio: float | None = 3.0,
        target_vfe: float | None = None,
        vfe_method: str = "corrected",
        mode: str = "static",
        permute_channels: bool = False,
    ) -> None:
        self.params = {
            "region_size": region_size, "block_sizes": list(block_sizes), "target_ratio": target_ratio,
            "target_vfe": target_vfe, "vfe_method": vfe_method, "mode": mode, "permute_channels": permute_channels,
        }  # the key is deliberately not a reportable parameter
        self.epsilon = None
        self.mixer = VisualMixer(
            key, region_size=int(region_size), block_sizes=tuple(int(b) for b in block_sizes), target_ratio=target_ratio,
            target_vfe=target_vfe, vfe_method=vfe_method, mode=mode, permute_channels=bool(permute_channels),  # type: ignore[arg-type]
        )

    def _apply(self, images: Tensor, sample_ids: Tensor, epoch: int) -> Tensor:
        return self.mixer(images, sample_ids, epoch)


@register_privacy_method("block_shuffle")
class BlockShuffleMethod(VisualMixerMethod):
    """Plain obfuscation baseline: one block size everywhere, no VFE target (the authors' prototype in practice)."""

    def __init__(self, key: bytes | None = None, region_size: int = 8, block_size: int = 1, mode: str = "static", permute_channels: bool = True) -> None:
        super().__init__(key, region_size=region_size, block_sizes=(block_size,), target_ratio=None, target_vfe=None, mode=mode, permute_channels=permute_channels)
        self.params = {"region_size": region_size, "block_size": block_size, "mode": mode, "permute_channels": permute_channels}
