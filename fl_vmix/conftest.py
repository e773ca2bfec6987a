"""Fixtures shared by the package's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fl_vmix.experiment import Experiment, compose


def write_colour_folder(root: Path, per_class: tuple[int, int] = (24, 6), size: int = 32) -> Path:
    """train/ and test/ image folders of three noisy colour classes: a dataset a CNN can learn."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class):
        for label, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture()
def tiny_experiment(tmp_path: Path) -> Callable[..., Experiment]:
    """An experiment on a small image-folder dataset made in code, plus overrides."""
    root = write_colour_folder(tmp_path / "images")

    def make(*overrides: str) -> Experiment:
        return compose(
            [
                "dataset=imagefolder",
                f"dataset.root={root}",
                f"dataset.cache_dir={tmp_path / 'cache'}",
                "num_clients=2",
                "batch_size=8",
                *overrides,
            ]
        )

    return make
