"""Image privacy transforms: the VFE metric and the keyed VisualMixer shuffle."""

from fl_vmix.privacy.mixer import MixParams, MixReport, MixResult, VisualMixer, VisualMixerTransform
from fl_vmix.privacy.vfe import VFE_METHODS, vfe, vfe_map

__all__ = ["VFE_METHODS", "MixParams", "MixReport", "MixResult", "VisualMixer", "VisualMixerTransform", "vfe", "vfe_map"]
