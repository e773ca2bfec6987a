"""Victims and the attacker's public data: disjoint splits of the experiment's dataset.

Victims are random images of the test split (with the validation split added when the test split
alone has fewer than asked for, as RetinaMNIST's 400 + 120); the attacker's public images are random
images of the training split, which holds none of them. Both selections depend only on the seed, so
every setting of an experiment is graded on the same victims with the same public data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fl_vmix.data import DataError, ImageArrays, load_dataset


@dataclass(frozen=True)
class GradeData:
    public_images: np.ndarray  # uint8 [P, C, H, W]
    public_labels: np.ndarray  # int64 [P]
    public_ids: Tensor  # int64 [P], global sample ids
    victims: Tensor  # float [N, C, H, W] in [0, 1]
    victim_labels: Tensor  # int64 [N]
    victim_ids: Tensor  # int64 [N]
    num_classes: int
    victim_splits: tuple[str, ...]
    victim_pool: int  # images in those splits

    def describe(self) -> dict[str, object]:
        return {
            "victims": {
                "n": int(self.victims.shape[0]),
                "splits": list(self.victim_splits),
                "pool": self.victim_pool,
                "selection": "random, seeded (the same victims for every setting)",
            },
            "public": {"n": int(self.public_images.shape[0]), "split": "train", "selection": "random, seeded"},
            "image_shape": list(self.victims.shape[1:]),
            "num_classes": self.num_classes,
        }


def _pick(total: int, count: int, seed: int, what: str) -> np.ndarray:
    digest = hashlib.sha256(f"fl_vmix-attack-grade-{what}-{seed}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(total, generator=generator)[: min(count, total)].sort().values.numpy()


def _victim_pool(dataset: str, root: str | None, cache_dir: str | None, victims: int) -> list[ImageArrays]:
    pool = [load_dataset(dataset, root, "test", cache_dir=cache_dir)]
    if len(pool[0]) < victims:
        try:
            pool.append(load_dataset(dataset, root, "val", cache_dir=cache_dir))
        except DataError:
            pass  # no validation split: the test split is all there is
    return pool


def load_grade_data(
    dataset: str, root: str | None, cache_dir: str | None, *, victims: int, public: int, seed: int
) -> GradeData:
    """``victims`` victim images (fewer when the splits hold fewer) and ``public`` public ones."""
    if victims < 1 or public < 1:
        raise ValueError(f"need at least one victim and one public image, got victims={victims}, public={public}")
    train = load_dataset(dataset, root, "train", cache_dir=cache_dir)
    pool = _victim_pool(dataset, root, cache_dir, victims)
    images = np.concatenate([np.asarray(split.images) for split in pool])
    labels = np.concatenate([np.asarray(split.labels) for split in pool])
    ids = np.concatenate([split.ids for split in pool])
    chosen = _pick(len(ids), victims, seed, "victims")
    pub = _pick(len(train), public, seed, "public")
    return GradeData(
        public_images=np.asarray(train.images[pub]),
        public_labels=np.asarray(train.labels[pub]),
        public_ids=torch.from_numpy(train.ids[pub]),
        victims=torch.from_numpy(images[chosen]).float() / 255,
        victim_labels=torch.from_numpy(labels[chosen]),
        victim_ids=torch.from_numpy(ids[chosen]),
        num_classes=train.num_classes,
        victim_splits=tuple(split.split for split in pool),
        victim_pool=len(ids),
    )
