import math

from fl_vmix.evaluation.frontier_report import END, START, front_findings, replace_section, section
from fl_vmix.evaluation.privacy_axis import TRAINING_LEVEL_NOTE, attack_columns


def _setting(name, method, accuracy, std, attack, se=0.01, seeds=3):
    return {
        "setting": name, "method": method, "seeds": seeds, "accuracy_mean": accuracy, "accuracy_std": std,
        "attack_ssim": attack, "attack_ssim_by": "learned" if attack is not None else None,
        "attack_recognition": None if attack is None else attack / 2, "attack_recognition_by": "clear model",
        "_attack_ssim_se": se, "_attack_chance": 0.1, "_attack_learned_steps": 1580.0, "vfe": 3.0, "ssim": 0.2,
        "attack_note": "",
    }  # fmt: skip


# A made-up experiment: accuracy (mean, std over seeds) and the strongest attack's SSIM (standard error 0.01).
SETTINGS = [
    _setting("none", "none", 0.80, 0.01, 1.0, se=0.0),
    _setting("vm", "visualmixer", 0.75, 0.01, 0.50),
    _setting("blur", "gaussian_blur", 0.70, 0.01, 0.60),  # vm beats it on both, beyond spread and noise
    _setting("mosaic", "mosaic", 0.76, 0.02, 0.52),  # on the front by its means, but no gap to vm is a finding
    _setting("noise", "pixel_dp_gaussian", 0.30, 0.01, 0.20),
    _setting("blur once", "gaussian_blur", 0.72, math.nan, 0.70, seeds=1),  # dominated, but one seed
    {**_setting("dp", "dp_sgd", 0.78, 0.01, None), "attack_note": TRAINING_LEVEL_NOTE},
]


def test_front_dominance_and_losses_count_only_gaps_beyond_the_spread():
    notes = front_findings(SETTINGS)
    front = notes[0]
    for name in ("none (", "vm (", "mosaic (", "noise ("):
        assert name in front
    assert "blur (" not in front and "dp (" not in front, "dominated or without an attack grade"
    vm = next(n for n in notes if n.startswith("vm:"))
    assert "dominates blur;" in vm and "mosaic" not in vm.split("loses")[0].replace("dominates blur", "")
    assert "accuracy to none (-5.0 pp" in vm and "privacy to noise (attack SSIM 0.500 against 0.200)" in vm
    assert "one seed, so no accuracy finding against blur once" in vm
    assert "to mosaic" not in vm, "0.75 vs 0.76 is within the spread and 0.50 vs 0.52 within the noise"


def test_section_lists_every_setting_and_replaces_itself():
    lines = section(SETTINGS, {"x": {"victims": {"n": 500, "splits": ["test"]}, "public": {"n": 20000}}}, True)
    text = "\n".join(lines)
    assert lines[0] == START and lines[-1] == END and "500 victim images" in text
    assert text.count("\n| ") == 1 + len(SETTINGS) and "Off this axis: dp." in text
    assert "| chance | learned steps | VFE |" in text and "| 0.100 | 1,580 | 3.00 |" in text
    report = replace_section("# report\n\nbody\n", lines)
    assert replace_section(report, lines) == report and report.count(START) == 1 and "body" in report


def test_attack_columns_carry_the_learned_attacks_steps():
    grade = {"attack_ssim": 0.5, "attack_ssim_by": "learned", "attack_recognition": 0.3,
             "attack_recognition_by": "learned", "attacks": {"learned": {"training": {"steps": 143}}}}  # fmt: skip
    assert attack_columns("visualmixer", "s", {"s": grade})["_attack_learned_steps"] == 143.0
    del grade["attacks"]
    assert math.isnan(attack_columns("mosaic", "s", {"s": grade})["_attack_learned_steps"])
    assert math.isnan(attack_columns("dp_sgd", "other", {"s": grade})["_attack_learned_steps"])
