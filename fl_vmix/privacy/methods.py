"""One registry of privacy methods, selected by name (the Hydra ``privacy`` group).

The registry is static: it lists every built-in method class below, so looking a name up never
imports anything by name. Image methods (:mod:`.shuffle`: VisualMixer, block shuffle;
:mod:`.baselines`: pixel DP, DP-Pix, blur, mosaic, none) change the images; training-level methods
(:mod:`.training_level`: DP-SGD, central DP) leave them alone and protect training instead. A new
method is a :class:`PrivacyMethod` subclass with a ``name``, added here or, from outside the
package, with :func:`register_privacy_method` (as Opacus extends through small registries).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from fl_vmix.privacy.base import PrivacyMethod, ProtectedBatch, TrainingLevelMethod, check_batch
from fl_vmix.privacy.baselines import DPPix, GaussianBlur, Identity, Mosaic, PixelDPGaussian, PixelDPLaplace
from fl_vmix.privacy.shuffle import BlockShuffleMethod, VisualMixerMethod
from fl_vmix.privacy.training_level import DPSGD, CentralDP

__all__ = [
    "PRIVACY_METHODS",
    "PrivacyMethod",
    "ProtectedBatch",
    "TrainingLevelMethod",
    "build_privacy_method",
    "check_batch",
    "method_parameters",
    "register_privacy_method",
]

_BUILT_IN: tuple[type[PrivacyMethod], ...] = (
    Identity,
    VisualMixerMethod,
    BlockShuffleMethod,
    PixelDPGaussian,
    PixelDPLaplace,
    DPPix,
    GaussianBlur,
    Mosaic,
    DPSGD,
    CentralDP,
)
PRIVACY_METHODS: dict[str, type[PrivacyMethod]] = {cls.name: cls for cls in _BUILT_IN}

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


def method_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The constructor parameters of a registered method (``key``/``seed`` are the client's secret)."""
    try:
        cls = PRIVACY_METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown privacy method {name!r}; valid names: {sorted(PRIVACY_METHODS)}") from None
    return dict(inspect.signature(cls).parameters)


def build_privacy_method(name: str, **params: Any) -> PrivacyMethod:
    """Build a registered method by name; unknown names or parameters raise ValueError listing the valid ones."""
    accepted = method_parameters(name)
    cls = PRIVACY_METHODS[name]
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as err:
        names = [n for n, p in accepted.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        raise ValueError(f"bad parameters for privacy method {name!r} ({err}); accepted parameters: {names}") from None
    return cls(**params)
