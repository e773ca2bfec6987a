"""Image privacy: the VFE metric, the keyed VisualMixer shuffle, and the registry of privacy methods.

This layer imports neither Flower nor any other fl_vmix layer above it (``tests/test_layering.py``).
"""

from fl_vmix.privacy.mixer import MixParams, MixReport, MixResult, VisualMixer, VisualMixerTransform
from fl_vmix.privacy.vfe import VFE_METHODS, vfe, vfe_map

__all__ = [
    "VFE_METHODS",
    "MixParams",
    "MixReport",
    "MixResult",
    "VisualMixer",
    "VisualMixerTransform",
    "vfe",
    "vfe_map",
]
