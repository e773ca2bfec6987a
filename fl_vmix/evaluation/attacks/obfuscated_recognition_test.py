import hashlib
from dataclasses import replace

import pytest
import torch

from fl_vmix.evaluation.attacks._testing import one_thread
from fl_vmix.evaluation.attacks.obfuscated_recognition import (
    ClassifierConfig,
    obfuscated_recognition_attack,
    train_classifier,
)
from fl_vmix.privacy import VisualMixer

_one_thread = pytest.fixture(autouse=True)(one_thread)

FAST = ClassifierConfig(epochs=6, batch_size=32, lr=0.05, chunk_size=128)
VICTIM_KEY = hashlib.sha256(b"victim").digest()


def _shuffle(region: int):
    def factory(key: bytes):
        mixer = VisualMixer(key, region_size=region, block_sizes=(1,), target_ratio=None)
        return lambda images, ids, epoch: mixer(images, ids, epoch)

    return factory


def _colour_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes told apart by their mean colour, which every within-region shuffle keeps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    colours = torch.tensor([[0.7, 0.3, 0.3], [0.3, 0.7, 0.3], [0.3, 0.3, 0.7]])
    images = colours[labels].view(n, 3, 1, 1) + 0.15 * torch.randn(n, 3, 16, 16, generator=g)
    return images.clamp(0, 1), labels


def _layout_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes that differ only in where the bright half is: same value distribution."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.full((n, 1, 16, 16), 0.25) + 0.1 * torch.rand(n, 1, 16, 16, generator=g)
    images[labels == 0, :, :, :8] += 0.5
    images[labels == 1, :, :, 8:] += 0.5
    return images, labels


def test_recogniser_trained_on_obfuscated_data_beats_chance_on_a_leaky_setting():
    public, public_labels = _colour_classes(300, seed=0)
    clear, labels = _colour_classes(90, seed=1)
    factory = _shuffle(4)
    victims = factory(VICTIM_KEY)(clear, torch.arange(90), 0)
    clear_model, _ = train_classifier(public, public_labels, 3, None, FAST)
    result, _ = obfuscated_recognition_attack(
        public, public_labels, victims, labels, factory, 3, FAST, victim_clear=clear, clear_classifier=clear_model
    )
    assert result.chance == pytest.approx(1 / 3) and result.n == 90
    assert result.accuracy > 0.9 and result.clear_model_on_clear > 0.9
    assert result.clear_model_on_obfuscated is not None and result.training["keys_used"] >= 6


def test_recogniser_stays_at_chance_when_nothing_leaks():
    # one region = the whole image: the shuffle keeps only the value distribution, identical for both classes
    public, public_labels = _layout_classes(256, seed=2)
    clear, labels = _layout_classes(200, seed=3)
    factory = _shuffle(16)
    config = replace(FAST, flip=False)  # a mirror would swap the classes
    clear_model, _ = train_classifier(public, public_labels, 2, None, config)
    victims = factory(VICTIM_KEY)(clear, torch.arange(200), 0)
    result, _ = obfuscated_recognition_attack(
        public, public_labels, victims, labels, factory, 2, config, victim_clear=clear, clear_classifier=clear_model
    )
    assert result.clear_model_on_clear > 0.95  # the classes are easy in the clear
    assert abs(result.accuracy - 0.5) < 0.12


def test_bad_inputs_raise():
    images, labels = _colour_classes(8, seed=0)
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(images, labels, 2)
    with pytest.raises(ValueError, match="labels must be"):
        train_classifier(images, labels[:4], 3)
    with pytest.raises(ValueError, match="epochs"):
        ClassifierConfig(epochs=0)
