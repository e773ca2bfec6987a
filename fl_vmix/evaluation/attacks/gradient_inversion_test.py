import pytest
import torch
from torch import nn

from fl_vmix.evaluation.attacks._testing import one_thread, smooth_images
from fl_vmix.evaluation.attacks.gradient_inversion import (
    analytic_linear_inversion,
    client_update,
    infer_labels,
    invert_gradients,
)
from fl_vmix.evaluation.attacks.jigsaw import random_block_permutation, shuffle_blocks
from fl_vmix.privacy.similarity import ssim

_one_thread = pytest.fixture(autouse=True)(one_thread)

SHAPE = (3, 16, 16)


def _linear(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))


def _tiny_conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


def _random_baseline(clear: torch.Tensor) -> float:
    return float(ssim(torch.rand(clear.shape, generator=torch.Generator().manual_seed(9)), clear).mean())


def test_client_update_is_lr_times_gradient_and_leaves_model_alone():
    model = _linear()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = smooth_images(2, 3, 16), torch.tensor([1, 4])
    update = client_update(model, x, y, local_steps=1, lr=0.5)
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(torch.allclose(u, 0.5 * g, atol=1e-6) for u, g in zip(update, grads))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("local_steps", [1, 3])
def test_analytic_linear_inversion_is_exact(local_steps):
    model, x = _linear(), smooth_images(1, 3, 16, seed=1)
    dw, db = client_update(model, x, torch.tensor([7]), local_steps=local_steps, lr=0.1)
    assert torch.allclose(analytic_linear_inversion(dw, db, SHAPE), x, atol=1e-5)


def test_labels_inferred_from_last_layer():
    x = smooth_images(1, 3, 16, seed=2)
    for model in (_linear(), _tiny_conv()):
        update = client_update(model, x, torch.tensor([6]))
        assert infer_labels(model, update, 10, 1).tolist() == [6]
    # batch with distinct labels: the lowest-k rule recovers the set
    xb = smooth_images(3, 3, 16, seed=3)
    update = client_update(_linear(), xb, torch.tensor([2, 8, 5]), local_steps=2, lr=0.1)
    assert sorted(infer_labels(_linear(), update, 10, 3).tolist()) == [2, 5, 8]


@pytest.mark.parametrize("labels_known", [True, False])
def test_linear_model_single_image_recovered(labels_known):
    model, x, y = _linear(), smooth_images(1, 3, 16, seed=4), torch.tensor([3])
    update = client_update(model, x, y)
    result = invert_gradients(
        model,
        update,
        batch_size=1,
        image_shape=SHAPE,
        num_classes=10,
        labels=y if labels_known else None,
        iterations=200,
        seed=0,
    )
    assert result.labels.tolist() == [3] and result.labels_inferred is not labels_known
    assert result.images.shape == (1, *SHAPE) and 0 <= result.images.min() and result.images.max() <= 1
    assert result.score(x).ssim_to_clear.item() > 0.95


def test_tiny_conv_single_image_well_above_random():
    model, x = _tiny_conv(), smooth_images(1, 3, 16, seed=5)
    update = client_update(model, x, torch.tensor([1]))
    result = invert_gradients(
        model, update, batch_size=1, image_shape=SHAPE, num_classes=10, iterations=200, tv_weight=0.1, seed=0
    )
    score = result.score(x).ssim_to_clear.item()
    assert score > 0.5 > _random_baseline(x) + 0.3


def test_multi_step_update_is_matched_by_unrolling():
    model, x, y = _linear(), smooth_images(1, 3, 16, seed=6), torch.tensor([0])
    update = client_update(model, x, y, local_steps=3, lr=0.1)
    result = invert_gradients(
        model,
        update,
        batch_size=1,
        image_shape=SHAPE,
        num_classes=10,
        local_steps=3,
        local_lr=0.1,
        iterations=200,
        seed=0,
        parametrisation="sigmoid",
    )
    assert result.labels.tolist() == [0]
    assert result.score(x).ssim_to_clear.item() > 0.9


def test_protected_client_leaks_the_obfuscated_image_not_the_clear_one():
    clear = smooth_images(1, 3, 16, seed=8)
    perm = random_block_permutation((1, 3, 2, 2), 4, torch.Generator().manual_seed(1))
    obfuscated = shuffle_blocks(clear, 8, 4, perm)
    model = _linear()
    update = client_update(model, obfuscated, torch.tensor([4]))
    result = invert_gradients(model, update, batch_size=1, image_shape=SHAPE, num_classes=10, iterations=200, seed=0)
    score = result.score(clear, obfuscated)
    assert score.ssim_to_obfuscated.item() > 0.9
    assert score.ssim_to_clear.item() < score.ssim_to_obfuscated.item() - 0.2


def test_seeded_runs_are_identical_and_seeds_differ():
    model, x = _tiny_conv(), smooth_images(1, 3, 16, seed=5)
    update = client_update(model, x, torch.tensor([1]))
    kwargs = dict(batch_size=1, image_shape=SHAPE, num_classes=10, iterations=10)
    a = invert_gradients(model, update, seed=3, **kwargs)
    b = invert_gradients(model, update, seed=3, **kwargs)
    c = invert_gradients(model, update, seed=4, **kwargs)
    assert torch.equal(a.images, b.images) and a.final_loss == b.final_loss
    assert not torch.equal(a.images, c.images)


def test_bad_inputs_raise():
    model = _linear()
    update = client_update(model, smooth_images(1, 3, 16), torch.tensor([0]))
    kwargs = dict(batch_size=1, image_shape=SHAPE, num_classes=10, iterations=1)
    with pytest.raises(ValueError, match="trainable parameters"):
        invert_gradients(model, update[:1], **kwargs)
    with pytest.raises(ValueError, match="shape"):
        invert_gradients(model, [update[0][:, :10], update[1]], **kwargs)
    with pytest.raises(ValueError, match="labels"):
        invert_gradients(model, update, labels=torch.tensor([10]), **kwargs)
    with pytest.raises(ValueError, match="no trainable parameter has 7"):
        infer_labels(model, update, 7, 1)
