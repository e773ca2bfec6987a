import pytest
import torch
from torch import nn

from fl_vmix.evaluation.attacks._testing import one_thread
from fl_vmix.evaluation.attacks.chain import (
    GEIPING_ITERATIONS_CIFAR,
    ChainConfig,
    chained_attack,
    invert_single_image_updates,
)
from fl_vmix.evaluation.attacks.gradient_inversion import client_update, invert_gradients
from fl_vmix.evaluation.attacks.jigsaw import shuffle_blocks
from fl_vmix.evaluation.attacks.learned import LearnedAttackConfig, LearnedDeobfuscator, train_deobfuscator

_one_thread = pytest.fixture(autouse=True)(one_thread)

PERM = torch.roll(torch.arange(4), 1).view(1, 1, 1, 1, -1)


def _fixed_shuffle(images: torch.Tensor, ids: torch.Tensor, epoch: int) -> torch.Tensor:
    """Key-independent: every 2-px region rotated by one pixel (learnable, so stage 2 has a known answer)."""
    return shuffle_blocks(images, 2, 1, PERM)


@pytest.fixture(scope="module")
def deobfuscator() -> LearnedDeobfuscator:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    public = torch.rand(512, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    config = LearnedAttackConfig(
        region_size=2, quantiles=4, widths=(8, 16), epochs=4, batch_size=32, lr=1e-2, chunk_size=256,
        validation_images=0, flip=False,
    )  # fmt: skip
    model, _ = train_deobfuscator(public, lambda key: _fixed_shuffle, config)
    torch.set_num_threads(before)
    return model


@pytest.mark.parametrize("vectorised", [True, False])
def test_inversion_then_deobfuscation_restores_the_clear_images(deobfuscator, vectorised):
    # a linear model's single-image update determines its input, so stage 1 recovers the obfuscated image
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    clear = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    obfuscated = _fixed_shuffle(clear, torch.arange(2), 0)
    config = ChainConfig(iterations=200, tv_weight=0.0, vectorised=vectorised)
    calls = []
    result = chained_attack(
        model,
        clear,
        obfuscated,
        torch.tensor([3, 7]),
        deobfuscator,
        10,
        config,
        progress=lambda i, n: calls.append((i, n)),
    )
    assert calls == ([(2, 2)] if vectorised else [(1, 2), (2, 2)]) and result.n == 2 and result.labels_correct == 1.0
    assert result.inverted_ssim_to_obfuscated > 0.95 and result.inverted_ssim_to_clear < 0.5
    assert result.oracle_ssim_to_clear > 0.95 and result.chain_ssim_to_clear > 0.9
    assert result.images["chain"].shape == clear.shape and result.iterations == 200
    assert set(result.summary()) >= {"chain_ssim_to_clear", "inverted_ssim_to_obfuscated", "mean_final_loss"}


@pytest.mark.parametrize("iterations", [1, 30])
def test_vectorised_inversion_equals_one_inversion_per_update(iterations):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 10))
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 5, 8])

    def normalise(t):
        return (t - 0.5) / 0.5

    updates = [client_update(model, x[i : i + 1], labels[i : i + 1], input_transform=normalise) for i in range(3)]
    config = ChainConfig(iterations=iterations, tv_weight=0.05, seed=7)
    batched, inferred, losses, curve = invert_single_image_updates(
        model, updates, (3, 12, 12), 10, config, input_transform=normalise
    )
    assert inferred.tolist() == labels.tolist() and len(losses) == 3 and curve[-1] == pytest.approx(sum(losses) / 3)
    for i, update in enumerate(updates):
        one = invert_gradients(
            model, update, batch_size=1, image_shape=(3, 12, 12), num_classes=10, iterations=iterations,
            tv_weight=0.05, seed=7 + i, input_transform=normalise,
        )  # fmt: skip
        same = (one.images[0] - batched[i]).abs() < 1e-5
        assert same.float().mean() > 0.99  # signed steps: a gradient within rounding of 0 may flip
        assert one.final_loss == pytest.approx(losses[i], abs=1e-3)


def test_published_iterations_and_bad_inputs(deobfuscator):
    assert GEIPING_ITERATIONS_CIFAR == 4800
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    x = torch.rand(3, 1, 12, 12)
    with pytest.raises(ValueError, match="full client batch"):
        chained_attack(model, x, x, torch.zeros(3), deobfuscator, 10, ChainConfig(batch_size=4))
    with pytest.raises(ValueError, match="labels"):
        chained_attack(model, x, x, torch.zeros(2), deobfuscator, 10)
    with pytest.raises(ValueError, match="iterations"):
        ChainConfig(iterations=0)
