"""Model registry: build any supported classifier by name, for any channel count and image size.

Every model ends in global average pooling, so one architecture serves 28x28 (MedMNIST, MNIST),
32x32 (CIFAR) and larger images. For small images (``image_size <= SMALL_INPUT_MAX``) the
torchvision networks get CIFAR-style stems (stride-1 first convolution, no stem max-pool): their
ImageNet stems would shrink a 32 px image 4x before the first block and waste most of the network.
Larger images keep the ImageNet stems. No pretrained weights are ever downloaded. torchvision is
imported only when one of its networks is built: importing it costs seconds (it loads torch._dynamo),
which a ClientApp process training the small CNN should not pay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fl_vmix.models.cnn import SmallCNN
from fl_vmix.models.invariance import RegionSortInvariance
from fl_vmix.models.resnet_cifar import CifarResNet

__all__ = ["MODELS", "SMALL_INPUT_MAX", "ModelFactory", "build_model", "count_parameters"]

#: Images up to this side length get CIFAR-style (stride-1, no max-pool) stems.
SMALL_INPUT_MAX = 64

#: factory(num_classes, in_channels, image_size) -> model
ModelFactory = Callable[[int, int, int], nn.Module]


def _stem_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    """A bias-free stem convolution initialised as torchvision initialises its convolutions."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _cnn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)


def _torchvision_resnet(name: str) -> ModelFactory:
    """torchvision's ResNet ``name`` with a CIFAR stem for small images (and a stem for other channel counts)."""

    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if image_size <= SMALL_INPUT_MAX:
            model.conv1 = _stem_conv(in_channels, 64, kernel_size=3, stride=1)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = _stem_conv(in_channels, 64, kernel_size=7, stride=2)
        return model

    return build


def _resnet20(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(num_classes, in_channels, blocks=3)


def _shufflenet_v2(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=num_classes)
    stem_out = model.conv1[0].out_channels
    if image_size <= SMALL_INPUT_MAX:
        model.conv1[0] = _stem_conv(in_channels, stem_out, kernel_size=3, stride=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1[0] = _stem_conv(in_channels, stem_out, kernel_size=3, stride=2)
    return model


def _mobilenet_v2(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    stem_out = model.features[0][0].out_channels
    stride = 1 if image_size <= SMALL_INPUT_MAX else 2
    if stride == 1 or in_channels != 3:
        model.features[0][0] = _stem_conv(in_channels, stem_out, kernel_size=3, stride=stride)
    return model


#: name -> factory(num_classes, in_channels, image_size)
MODELS: dict[str, ModelFactory] = {
    "cnn": _cnn,
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet20": _resnet20,
    "resnet50": _torchvision_resnet("resnet50"),
    "shufflenet_v2": _shufflenet_v2,
    "mobilenet_v2": _mobilenet_v2,
}


def _check_positive_int(name: str, value: object, minimum: int, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; pass e.g. {example}")


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded, restoring the caller's RNG state afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    invariant_region: int | None = None,
    *,
    seed: int | None = None,
) -> nn.Module:
    """Build a freshly initialised classifier by registry name.

    Args:
        name: one of ``MODELS`` ("cnn", "resnet18", "resnet20", "resnet50", "shufflenet_v2", "mobilenet_v2").
        num_classes: number of output logits.
        in_channels: image channels (1 for grey, 3 for RGB).
        image_size: side of the (square) training images; chooses the stem (see module docstring).
            The models accept other sizes too (global pooling); this only tunes the stem.
        invariant_region: if given, prepend :class:`RegionSortInvariance` with this region size and
            return ``nn.Sequential(RegionSortInvariance(r), model)``.
        seed: if given, the weights are initialised from this seed (the caller's global RNG state is
            left untouched), so two calls give identical models; ``None`` uses torch's global RNG.

    Returns:
        The model, mapping ``[B, in_channels, H, W]`` to ``[B, num_classes]`` logits.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    _check_positive_int("num_classes", num_classes, 1, "num_classes=10")
    _check_positive_int("in_channels", in_channels, 1, "in_channels=3 (RGB) or 1 (grey)")
    _check_positive_int("image_size", image_size, 8, "image_size=32")
    if invariant_region is not None:
        _check_positive_int("invariant_region", invariant_region, 1, "invariant_region=4, or None to disable")
    with _seeded(seed):
        model = MODELS[name](num_classes, in_channels, image_size)
    if invariant_region is not None:
        return nn.Sequential(RegionSortInvariance(invariant_region), model)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` unless ``trainable_only=False``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
