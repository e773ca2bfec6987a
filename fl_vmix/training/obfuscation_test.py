"""obfuscate binds the dataset the ids index into the method's keyed randomness."""

import numpy as np
import torch

from fl_vmix.data.client import DatasetIdentity
from fl_vmix.privacy.methods import build_privacy_method
from fl_vmix.training.obfuscation import obfuscate

KEY = bytes(range(32))


def test_the_same_ids_of_two_datasets_are_protected_differently():
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    labels, ids = np.zeros(4, dtype=np.int64), np.arange(4)
    method = build_privacy_method("visualmixer", key=KEY)
    cifar, svhn = DatasetIdentity("cifar10", "train", "aa"), DatasetIdentity("svhn", "train", "bb")
    a = obfuscate(method, images, labels, ids, 0, 8, similarity=False, dataset=cifar).images
    b = obfuscate(method, images, labels, ids, 0, 8, similarity=False, dataset=svhn).images
    assert not torch.equal(a, b)
    expected = method(torch.from_numpy(images).float() / 255, torch.from_numpy(ids), 0, cifar.token)
    assert torch.equal(a, expected)  # the token is what reaches the method
