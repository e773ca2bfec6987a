"""The grading budgets: how hard the attacker tries on every setting (recorded in each grade)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# What a stage's result depends on (a cached stage is reused only while these are unchanged).
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "obfuscated": ("victims", "public", "seed", "classifier_epochs", "classifier_budget_s"),
    "thumbnail": ("victims", "public", "seed", "classifier_epochs", "classifier_budget_s"),
    "learned": (
        "victims", "public", "seed", "classifier_epochs", "classifier_budget_s",
        "learned_budget_s", "learned_epochs", "widths",
    ),
    "candidate_search": (
        "victims", "public", "seed", "classifier_epochs", "classifier_budget_s", "candidates", "candidate_rounds",
    ),
    "obfuscated_classifier": ("victims", "public", "seed", "recogniser_epochs", "recogniser_budget_s"),
}  # fmt: skip


@dataclass(frozen=True)
class GradeConfig:
    """Budgets of every attack. Defaults: the issue's scale (500 victims, 20,000 public images, a 30-minute
    learned attack on 2 CPU cores): about 70 minutes per shuffle setting on 2 cores, plus the clear
    classifier (up to 30 minutes) once per dataset, cached."""

    victims: int = 500
    public: int = 20000
    learned_budget_s: float = 1800.0
    learned_epochs: int = 5
    widths: tuple[int, ...] = (32, 64, 128)
    candidates: int = 64
    candidate_rounds: int = 10
    classifier_epochs: int = 15
    classifier_budget_s: float = 1800.0
    recogniser_epochs: int = 15
    recogniser_budget_s: float = 1800.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("victims", "public", "learned_epochs", "candidate_rounds", "classifier_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("candidates", "recogniser_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 skips the attack), got {getattr(self, name)}")
        for name in ("learned_budget_s", "classifier_budget_s", "recogniser_budget_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive seconds, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    def stage_key(self, stage: str) -> dict[str, Any]:
        values = self.as_dict()
        return {name: values[name] for name in STAGE_FIELDS[stage]}

    def changed_stages(self, grade: dict[str, Any]) -> list[str]:
        """The stages of a finished ``grade`` that were run with other budgets than these (rerun to compare)."""
        stages = grade.get("stages", {})
        return [name for name in STAGE_FIELDS if stages.get(name, {}).get("key") != self.stage_key(name)]
