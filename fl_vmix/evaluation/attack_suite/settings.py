"""What the attack suite measures and how it decides success: thresholds, scales, table columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fl_vmix.evaluation.attack_suite.subjects import AttackSuiteError, Subject

INVERSION_SUCCESS_SSIM = 0.5
RECOGNITION_ALPHA = 0.01
JIGSAW_SUCCESS_IN_PLACE = 0.5
JIGSAW_SUCCESS_SSIM = 0.5
JIGSAW_SUCCESS_GAIN = 0.1
SHUFFLE_METHODS = ("visualmixer", "block_shuffle")
TRAINING_METHODS = ("dp_sgd", "central_dp")

ATTACK_COLUMNS = [
    "method",
    "label",
    "params",
    "attack",
    "model",
    "batch_size",
    "local_steps",
    "n",
    "ssim_to_clear",
    "psnr_to_clear",
    "ssim_to_obfuscated",
    "psnr_to_obfuscated",
    "obfuscated_ssim_to_clear",
    "accuracy",
    "chance",
    "majority_rate",
    "p_value",
    "blocks_in_place",
    "neighbours_correct",
    "labels_correct",
    "success",
    "applicable",
    "seconds",
    "note",
]
SWEEP_COLUMNS = [
    "region_size",
    "block_sizes",
    "target_ratio",
    "permute_channels",
    "mean_block_size",
    "n",
    "blocks_in_place",
    "neighbours_correct",
    "obfuscated_ssim_to_clear",
    "ssim_to_clear",
    "psnr_to_clear",
    "ssim_gain",
    "region_mean_ssim_to_clear",
    "success",
    "verdict",
    "seconds",
]

# Item 6: VisualMixer settings whose jigsaw leak is measured (one knob at a time around the default).
DEFAULT_SWEEP: tuple[dict[str, Any], ...] = (
    {"region_size": 4, "block_sizes": [2], "target_ratio": None},
    {"region_size": 4, "block_sizes": [1], "target_ratio": None},
    {"region_size": 8, "block_sizes": [4], "target_ratio": None},
    {"region_size": 8, "block_sizes": [2], "target_ratio": None},
    {"region_size": 8, "block_sizes": [1], "target_ratio": None},
    {"region_size": 16, "block_sizes": [8], "target_ratio": None},
    {"region_size": 16, "block_sizes": [4], "target_ratio": None},
    {"region_size": 16, "block_sizes": [2], "target_ratio": None},
    {"region_size": 8, "block_sizes": [4, 2, 1], "target_ratio": 1.5},
    {"region_size": 8, "block_sizes": [4, 2, 1], "target_ratio": 3.0},
    {"region_size": 8, "block_sizes": [2, 1], "target_ratio": 1.5},
    {"region_size": 8, "block_sizes": [2, 1], "target_ratio": 3.0},
    {"region_size": 8, "block_sizes": [2, 1], "target_ratio": 6.0},
    {"region_size": 8, "block_sizes": [4], "target_ratio": None, "permute_channels": True},
    {"region_size": 8, "block_sizes": [2], "target_ratio": None, "permute_channels": True},
    {"region_size": 8, "block_sizes": [2, 1], "target_ratio": 3.0, "permute_channels": True},
)


@dataclass(frozen=True)
class SuiteSettings:
    """Scale of the attacks. Defaults keep one privacy setting to about a minute on one CPU core."""

    images: int = 8  # client images per setting (jigsaw, grid); inversion uses inversion_images
    inversion_images: int | None = None  # None: same as images
    inversion_iterations: int = 300
    inversion_batch_sizes: tuple[int, ...] = (1, 4)
    local_steps: tuple[int, ...] = (1,)
    local_lr: float = 0.01
    tv_weight: float = 0.1
    inversion_restarts: int = 1
    attack_trained: bool = False
    recognition_images: int = 500
    jigsaw_refine_steps: int | None = None
    sweep: tuple[dict[str, Any], ...] = DEFAULT_SWEEP
    sweep_images: int = 16
    grid_images: int = 2
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("images", "inversion_iterations", "inversion_restarts", "recognition_images", "grid_images"):
            if getattr(self, name) < 1:
                raise AttackSuiteError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.inversion_batch_sizes or min(self.inversion_batch_sizes) < 1:
            raise AttackSuiteError(f"inversion batch sizes must be >= 1, got {self.inversion_batch_sizes}")
        if not self.local_steps or min(self.local_steps) < 1:
            raise AttackSuiteError(f"local steps must be >= 1, got {self.local_steps}")
        if max(self.inversion_batch_sizes) > self.n_inversion:
            raise AttackSuiteError(
                f"inversion batch size {max(self.inversion_batch_sizes)} exceeds the {self.n_inversion} images "
                "attacked: raise --images/--inversion-images or lower --inversion-batch-sizes"
            )

    @property
    def n_inversion(self) -> int:
        return self.inversion_images if self.inversion_images is not None else self.images


@dataclass
class SubjectResult:
    """One privacy setting's rows, and the images of the attack grid (clear, protected, inverted, reassembled)."""

    subject: Subject
    rows: list[dict[str, Any]] = field(default_factory=list)
    clear: torch.Tensor | None = None
    obfuscated: torch.Tensor | None = None
    inverted: torch.Tensor | None = None
    reassembled: torch.Tensor | None = None


def attack_row(subject: Subject, attack: str, **values: Any) -> dict[str, Any]:
    """A row of ``attacks.csv`` for ``subject``; columns not given stay empty."""
    row: dict[str, Any] = {c: "" for c in ATTACK_COLUMNS}
    row.update(method=subject.method, label=subject.label, params=subject.params_text, attack=attack, applicable=True)
    row.update(values)
    return row
