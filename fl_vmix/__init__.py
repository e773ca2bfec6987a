"""fl_vmix: VisualMixer (NDSS 2024) visual-privacy obfuscation for federated learning with Flower."""

from fl_vmix.optim import STAdam
from fl_vmix.privacy import MixParams, MixReport, MixResult, VisualMixer, vfe, vfe_map

__version__ = "0.1.0"
__all__ = ["MixParams", "MixReport", "MixResult", "STAdam", "VisualMixer", "vfe", "vfe_map"]
