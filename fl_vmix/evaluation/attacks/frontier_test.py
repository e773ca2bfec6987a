import pytest

from fl_vmix.evaluation.attacks.frontier import pareto_front, plot_frontier, privacy_axis, strongest_attack

# A made-up table: (label, accuracy, attack_ssim, attack_recognition).
TABLE = [
    ("clear", 0.80, 1.00, 0.80),  # front (most accurate)
    ("a", 0.75, 0.60, 0.50),  # front
    ("b", 0.70, 0.65, 0.30),  # dominated by a on SSIM; on the recognition front
    ("c", 0.60, 0.30, 0.40),  # front
    ("d", 0.55, 0.30, 0.20),  # dominated by c (same SSIM, less accurate); recognition front
    ("e", 0.20, 0.10, 0.10),  # front (most private)
    ("f", 0.15, 0.12, 0.10),  # dominated by e on both
]
ROWS = [{"label": lab, "accuracy": acc, "attack_ssim": s, "attack_recognition": r} for lab, acc, s, r in TABLE]


def _labels(mask):
    return {row["label"] for row, on in zip(ROWS, mask) if on}


def test_pareto_front_of_a_hand_made_table():
    assert _labels(pareto_front(ROWS)) == {"clear", "a", "c", "e"}
    assert _labels(pareto_front(ROWS, attack="attack_recognition")) == {"clear", "a", "b", "d", "e"}


def test_duplicates_stay_and_missing_values_never_count():
    rows = [
        {"accuracy": 0.5, "attack_ssim": 0.5},
        {"accuracy": 0.5, "attack_ssim": 0.5},
        {"accuracy": "", "attack_ssim": 0.0},  # CSV empty cell: no accuracy, dominates nothing
        {"accuracy": 0.9, "attack_ssim": float("nan")},
        {"accuracy": "0.4", "attack_ssim": "0.6"},  # numbers as CSV strings, dominated
    ]
    assert pareto_front(rows) == [True, True, False, False, False]


def test_strongest_attack_takes_the_maximum_per_setting_and_skips_inapplicable_rows():
    rows = [
        {"method": "vm", "params": "r8", "attack": "jigsaw", "ssim_to_clear": 0.49, "accuracy": ""},
        {"method": "vm", "params": "r8", "attack": "learned", "ssim_to_clear": "0.55", "accuracy": 0.31},
        {"method": "vm", "params": "r8", "attack": "recognition", "ssim_to_clear": "", "accuracy": 0.36},
        {"method": "vm", "params": "r8", "attack": "bogus", "ssim_to_clear": 0.99, "applicable": "False"},
        {"method": "blur", "params": "s2", "attack": "inversion", "ssim_to_clear": 0.54, "accuracy": None},
        {"method": "blur", "params": "s2", "attack": "recognition", "ssim_to_clear": None, "accuracy": 0.27},
        {"method": "none", "params": "", "attack": "jigsaw", "applicable": False, "ssim_to_clear": 1.0},
    ]
    assert strongest_attack(rows, "ssim_to_clear") == {
        ("vm", "r8"): (0.55, "learned"),
        ("blur", "s2"): (0.54, "inversion"),
    }
    axis = privacy_axis(rows)
    assert [
        (r["method"], r["attack_ssim"], r["attack_ssim_by"], r["attack_recognition"], r["attack_recognition_by"])
        for r in axis
    ] == [
        ("vm", 0.55, "learned", 0.36, "recognition"),
        ("blur", 0.54, "inversion", 0.27, "recognition"),
        ("none", None, None, None, None),
    ]


def test_setting_columns_must_exist():
    with pytest.raises(ValueError, match="setting column"):
        strongest_attack([{"method": "vm", "ssim_to_clear": 0.5}], "ssim_to_clear")


def test_plot_marks_the_front(tmp_path):
    path = plot_frontier(ROWS, tmp_path / "front.png", title="made-up")
    assert path.exists() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_frontier([{"accuracy": 0.5}], tmp_path / "empty.png")
