"""Model registry (CNN, ResNet-18/20/50, ShuffleNetV2, MobileNetV2) and a shuffle-invariant input stage."""

from fl_vmix.models.cnn import SmallCNN
from fl_vmix.models.invariance import RegionSortInvariance, region_sort
from fl_vmix.models.registry import MODELS, SMALL_INPUT_MAX, ModelFactory, build_model, count_parameters

__all__ = [
    "MODELS",
    "SMALL_INPUT_MAX",
    "ModelFactory",
    "RegionSortInvariance",
    "SmallCNN",
    "build_model",
    "count_parameters",
    "region_sort",
]
