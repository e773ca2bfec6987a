import pytest
import torch
from torch import nn

from fl_vmix.evaluation.attacks.recognition import recognition_accuracy


def _brighter_half_model() -> nn.Module:
    """A real linear classifier that is right by construction: class 0 iff the left half is brighter."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    left = torch.tensor([1.0, 1, 0, 0]).repeat(4)  # 4x4 image, row-major: columns 0-1 are the left half
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([left - (1 - left), (1 - left) - left]))
        model[1].bias.zero_()
    return model


def _images(labels: torch.Tensor) -> torch.Tensor:
    x = torch.full((labels.numel(), 1, 4, 4), 0.2)
    x[labels == 0, :, :, :2] = 0.8
    x[labels == 1, :, :, 2:] = 0.8
    return x


def test_accuracy_next_to_chance_and_majority():
    labels = torch.tensor([0, 0, 0, 1])
    model = _brighter_half_model().train()
    out = recognition_accuracy(model, _images(labels), labels, batch_size=3)
    assert out == {"accuracy": 1.0, "chance": 0.5, "majority_rate": 0.75, "num_classes": 2.0, "n": 4.0}
    assert model.training  # mode restored


def test_mirrored_images_are_misrecognised():
    labels = torch.tensor([0, 1, 1, 0, 1])
    out = recognition_accuracy(_brighter_half_model(), _images(labels).flip(-1), labels)
    assert out["accuracy"] == 0.0


def test_bad_labels_raise():
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="labels"):
        recognition_accuracy(_brighter_half_model(), _images(labels), labels[:1])
    with pytest.raises(ValueError, match="num_classes"):
        recognition_accuracy(_brighter_half_model(), _images(labels), torch.tensor([0, 5]))
