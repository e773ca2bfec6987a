"""The new attacks on real CIFAR-10 images against the default VisualMixer, at CI scale (seconds, not the
experiment's scale: ``scripts/attack_learned.py`` runs those). Skips locally without ../shared/data,
fails in CI."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch

from conftest import require_shared
from fl_vmix.evaluation.attacks._testing import one_thread
from fl_vmix.evaluation.attacks.candidate_search import candidate_search
from fl_vmix.evaluation.attacks.learned import (
    LearnedAttackConfig,
    keyed_method_factory,
    score_learned_attack,
    train_deobfuscator,
)
from fl_vmix.privacy.similarity import ssim

pytestmark = pytest.mark.integration
_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    from fl_vmix.data import load_dataset

    root = require_shared("cifar10-jpg.tar.xz").parent
    cache = tmp_path_factory.mktemp("cache")
    train = load_dataset("cifar10", root, "train", cache_dir=cache, download=False)
    test = load_dataset("cifar10", root, "test", cache_dir=cache, download=False)
    g = torch.Generator().manual_seed(0)
    pub = torch.randperm(len(train), generator=g)[:1024].sort().values.numpy()  # random: the split is sorted by class
    vic = torch.randperm(len(test), generator=g)[:64].sort().values.numpy()
    clear = torch.from_numpy(np.asarray(test.images[vic])).float() / 255
    logging.getLogger("fl_vmix.privacy").setLevel(logging.ERROR)
    factory = keyed_method_factory("visualmixer")  # the federated runs' default setting
    obfuscated = factory(hashlib.sha256(b"victim").digest())(clear, torch.from_numpy(test.ids[vic]), 0)
    return {"public": np.asarray(train.images[pub]), "clear": clear, "obfuscated": obfuscated, "factory": factory}


def test_learned_attack_beats_both_baselines_after_a_short_training(cifar):
    config = LearnedAttackConfig(widths=(16, 32, 64), epochs=1, batch_size=32, chunk_size=512, validation_images=0)
    model, history = train_deobfuscator(cifar["public"], cifar["factory"], config)
    result = score_learned_attack(model.reconstruct(cifar["obfuscated"]), cifar["clear"], cifar["obfuscated"], 8)
    assert history.head == "quantile" and history.keys_used == 2
    assert result.ssim_to_clear > result.thumbnail_ssim > result.obfuscated_ssim + 0.1


def test_candidate_search_lifts_ssim(cifar):
    result = candidate_search(cifar["obfuscated"], 8, (2, 1), candidates=64, ramps=16, rounds=2)
    before, after = ssim(cifar["obfuscated"], cifar["clear"]).mean(), ssim(result.images, cifar["clear"]).mean()
    assert after > before + 0.2
