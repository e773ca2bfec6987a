"""The attack suite end to end on two tiny finished-run folders, and the DP update simulations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fl_vmix.evaluation.attack_suite import oracle, runner, settings, subjects, updates
from fl_vmix.evaluation.attacks import client_update, score_reconstruction, shuffle_blocks, solve_jigsaw_per_region
from fl_vmix.evaluation.attacks._testing import one_thread, smooth_images
from fl_vmix.experiment import compose
from fl_vmix.factory import build_model
from fl_vmix.privacy import VisualMixer

_one_thread = pytest.fixture(autouse=True)(one_thread)

SIZE = 16  # >= 11 px for SSIM's window


def _image_folder(root: Path) -> None:
    """Three classes of smooth colour gradients (test split included), 16 px."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for split, count in (("train", 8), ("test", 4)):
        for label, colour in enumerate([(200, 60, 60), (60, 200, 60), (60, 60, 200)]):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                phase = rng.uniform(0, 6)
                wave = (np.sin(4 * xx + 3 * yy + phase) * 40)[..., None]
                pixels = np.clip(np.array(colour) + wave + rng.normal(0, 5, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _finished_run(folder: Path, overrides: list[str]) -> Path:
    experiment = compose(overrides)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(experiment.to_dict()))
    torch.manual_seed(1)
    torch.save(build_model(experiment, 3, 3, SIZE).state_dict(), folder / "model.pt")
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    _image_folder(tmp_path / "images")
    common = [
        "dataset=imagefolder",
        f"dataset.root={tmp_path / 'images'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "num_clients=2",
        "model=cnn",
    ]
    return [
        _finished_run(tmp_path / "run_none", [*common, "privacy=none"]),
        _finished_run(
            tmp_path / "run_vm",
            [*common, "privacy=visualmixer", "privacy.block_sizes=[4,2]", "privacy.target_ratio=1.5"],
        ),
    ]


TINY = settings.SuiteSettings(
    images=4,
    inversion_iterations=3,
    inversion_batch_sizes=(1, 2),
    recognition_images=12,
    sweep_images=2,
    grid_images=1,
    sweep=(
        {"region_size": 8, "block_sizes": [4], "target_ratio": None},
        {"region_size": 8, "block_sizes": [4, 2], "target_ratio": 2.0},
    ),
)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_suite_end_to_end_on_two_tiny_runs(runs, tmp_path):
    out = runner.run_suite(runs, "tiny", tmp_path / "results", TINY, methods=[["gaussian_blur"]])
    assert out == tmp_path / "results" / "tiny"
    rows = _read(out / "attacks.csv")
    assert set(settings.ATTACK_COLUMNS) <= set(rows[0]) and {
        "method",
        "params",
        "attack",
        "ssim_to_clear",
        "psnr_to_clear",
        "success",
    } <= set(rows[0])
    by = {(r["method"], r["attack"], r["batch_size"]): r for r in rows}
    for method in ("none", "visualmixer", "gaussian_blur"):
        assert [r["batch_size"] for r in rows if r["method"] == method and r["attack"] == "inversion"] == ["1", "2"]
        assert sum(r["method"] == method and r["attack"] == "recognition" for r in rows) == 1
        assert sum(r["method"] == method and r["attack"] == "jigsaw" for r in rows) == 1
    assert len(rows) == 3 * 4
    # inversion is scored against the clear image and the image trained on; they coincide for "none"
    none_inv = by[("none", "inversion", "1")]
    assert float(none_inv["ssim_to_clear"]) == pytest.approx(float(none_inv["ssim_to_obfuscated"]))
    assert float(none_inv["obfuscated_ssim_to_clear"]) == pytest.approx(1.0)
    assert float(by[("visualmixer", "inversion", "1")]["obfuscated_ssim_to_clear"]) < 0.99
    # recognition uses the clear run's model; accuracy sits next to chance
    rec = by[("visualmixer", "recognition", "")]
    assert (
        rec["applicable"] == "True"
        and float(rec["chance"]) == pytest.approx(1 / 3)
        and 0 <= float(rec["accuracy"]) <= 1
    )
    assert "run_none" in rec["note"]
    # jigsaw only for the shuffling method, with the oracle noted for per-region block sizes
    jig = by[("visualmixer", "jigsaw", "")]
    assert jig["applicable"] == "True" and 0 <= float(jig["blocks_in_place"]) <= 1 and "oracle" in jig["note"]
    assert by[("none", "jigsaw", "")]["applicable"] == "False" and by[("none", "jigsaw", "")]["success"] == ""
    assert by[("gaussian_blur", "jigsaw", "")]["applicable"] == "False"
    assert all(r["success"] in ("True", "False") for r in rows if r["applicable"] == "True")
    sweep = _read(out / "jigsaw_sweep.csv")
    assert jig["note"].split(";")[0] in ("leaks", "partial", "holds")
    assert len(sweep) == 2 and set(settings.SWEEP_COLUMNS) == set(sweep[0])
    assert all(
        r["verdict"] in ("leaks", "partial", "holds") and (r["verdict"] == "leaks") == (r["success"] == "True")
        for r in sweep
    )
    assert (out / "attacks_grid.png").stat().st_size > 0
    md = (out / "attacks.md").read_text()
    assert "## Gradient inversion" in md and "## Findings" in md and "Attack check" in md and "gaussian_blur" in md


def test_recognition_is_skipped_with_a_message_without_a_clear_run(runs, tmp_path):
    small = settings.SuiteSettings(
        images=2, inversion_iterations=1, inversion_batch_sizes=(1,), sweep=(), grid_images=1
    )
    out = runner.run_suite(runs[1:], "noclear", tmp_path / "results", small)
    rec = [r for r in _read(out / "attacks.csv") if r["attack"] == "recognition"]
    assert len(rec) == 1 and rec[0]["applicable"] == "False" and "no run with privacy.method=none" in rec[0]["note"]
    assert "no run with privacy.method=none" in (out / "attacks.md").read_text()
    assert not (out / "jigsaw_sweep.csv").exists()


def test_runs_on_different_datasets_are_refused(runs, tmp_path):
    other = json.loads((runs[1] / "config.json").read_text())
    other["dataset"]["name"] = "cifar10"
    folder = tmp_path / "run_other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(other))
    with pytest.raises(subjects.AttackSuiteError, match="different datasets.*once per dataset"):
        subjects.subjects_from_runs([runs[0], folder])
    with pytest.raises(subjects.AttackSuiteError, match="no config.json"):
        subjects.subjects_from_runs([tmp_path])


def test_runs_are_grouped_by_setting_and_labelled(runs, tmp_path):
    copy = tmp_path / "run_none_again"
    copy.mkdir()
    (copy / "config.json").write_text((runs[0] / "config.json").read_text())
    found = subjects.subjects_from_runs([runs[0], runs[1], copy])
    assert [s.method for s in found] == ["none", "visualmixer"] and found[0].runs == (runs[0], copy)
    strong = subjects.subject_from_spec(found[0].experiment, ["visualmixer", "region_size=4", "block_sizes=[1]"])
    labelled = subjects.label_subjects([found[1], strong])
    assert labelled[0].label != labelled[1].label and "region_size" in labelled[1].label
    assert strong.params["region_size"] == 4 and strong.params["block_sizes"] == [1]


# ------------------------------------------------------------------------------------ jigsaw scoring
def test_true_block_permutation_reproduces_the_shuffle():
    clear = smooth_images(2, 3, 16, seed=3)
    mixer = VisualMixer(bytes(range(32)), region_size=8, block_sizes=(4,), target_ratio=None)
    mix = mixer.mix(clear, torch.tensor([5, 9]), 0)
    perm = oracle.true_block_permutation(mixer, mix.params, clear.shape, 4)
    assert torch.equal(shuffle_blocks(clear, 8, 4, perm), mix.images)


def test_oracle_jigsaw_matches_the_library_per_region_solver_and_scores_placements():
    clear = smooth_images(3, 3, 16, seed=4)
    mixer = VisualMixer(bytes(range(32, 64)), region_size=8, block_sizes=(4, 2), target_ratio=1.3)
    mix = mixer.mix(clear, torch.tensor([1, 2, 3]), 0)
    outcome = oracle.jigsaw_with_oracle_sizes(mix.images, mixer, mix.params)
    reference = solve_jigsaw_per_region(mix.images, 8, oracle.block_size_map(mixer, mix.params, 16, 16))
    assert torch.equal(outcome.images, reference)
    # smooth content with 2x2 blocks of 4 px: the solver puts (almost) everything back
    easy = VisualMixer(bytes(range(32, 64)), region_size=8, block_sizes=(4,), target_ratio=None)
    mixed = easy.mix(clear, torch.tensor([1, 2, 3]), 0)
    solved = oracle.jigsaw_with_oracle_sizes(mixed.images, easy, mixed.params)
    assert solved.blocks_in_place > 0.9 and solved.mean_block_size == 4
    assert score_reconstruction(solved.images, clear).ssim_to_clear.mean() > 0.9


def test_region_means_keep_each_regions_average():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    means = oracle.region_means(x, 8)
    assert torch.allclose(means[..., :8, :8], x[..., :8, :8].mean((-2, -1), keepdim=True).expand(-1, -1, 8, 8))


# -------------------------------------------------------------------------------- DP update simulation
def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))


def _norm(update: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum(u.double().pow(2).sum() for u in update)))


def test_dp_sgd_update_clips_each_sample_and_leaves_the_model_alone():
    model = _net()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = smooth_images(3, 3, 16, seed=1) * 4, torch.tensor([0, 1, 2])  # large inputs: gradients far above the bound
    plain = client_update(model, x, y, lr=1.0)
    clipped = updates.dp_sgd_update(model, x, y, noise_multiplier=0.0, max_grad_norm=0.1, lr=1.0)
    assert _norm(plain) > 0.5
    assert _norm(clipped) <= 0.1 + 1e-5  # mean of 3 clipped per-sample gradients
    single = updates.dp_sgd_update(model, x[:1], y[:1], noise_multiplier=0.0, max_grad_norm=0.1, lr=1.0)
    assert _norm(single) == pytest.approx(0.1, rel=1e-4)  # one sample: exactly at the bound, same direction
    one = client_update(model, x[:1], y[:1], lr=1.0)
    cos = sum((a * b).sum() for a, b in zip(single, one)) / (_norm(single) * _norm(one))
    assert float(cos) == pytest.approx(1.0, abs=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_dp_sgd_noise_has_the_calibrated_std_and_is_seeded():
    model, x, y = _net(), smooth_images(4, 3, 16, seed=2), torch.tensor([0, 1, 2, 3])
    clean = updates.dp_sgd_update(model, x, y, noise_multiplier=0.0, max_grad_norm=0.5, lr=1.0)

    def noisy(seed: int) -> list[torch.Tensor]:
        return updates.dp_sgd_update(
            model, x, y, noise_multiplier=2.0, max_grad_norm=0.5, lr=1.0, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = noisy(1), noisy(1), noisy(2)
    noise = torch.cat([(u - v).flatten() for u, v in zip(a, clean)]) * 4  # undo the division by the batch size
    assert (
        noise.numel() > 3000
        and float(noise.std()) == pytest.approx(2.0 * 0.5, rel=0.05)
        and abs(float(noise.mean())) < 0.05
    )
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not all(torch.equal(u, v) for u, v in zip(a, c))


def test_central_dp_update_is_the_update_clipped_without_noise():
    model, x, y = _net(), smooth_images(2, 3, 16, seed=3) * 4, torch.tensor([1, 3])
    plain = client_update(model, x, y, lr=1.0)
    clipped = updates.central_dp_update(model, x, y, clipping_norm=0.2, lr=1.0)
    assert _norm(plain) > 0.2 and _norm(clipped) == pytest.approx(0.2, rel=1e-5)
    scale = 0.2 / _norm(plain)
    assert all(torch.allclose(c, p * scale, atol=1e-7) for c, p in zip(clipped, plain))
    loose = updates.central_dp_update(model, x, y, clipping_norm=1e6, lr=1.0)
    assert all(torch.allclose(c, p) for c, p in zip(loose, plain))
    with pytest.raises(ValueError, match="clipping_norm"):
        updates.central_dp_update(model, x, y, clipping_norm=0.0)


def test_bad_settings_name_the_fix():
    with pytest.raises(subjects.AttackSuiteError, match="inversion batch size 4 exceeds"):
        settings.SuiteSettings(images=2, inversion_batch_sizes=(1, 4))
    with pytest.raises(subjects.AttackSuiteError, match="at least one finished run"):
        subjects.subjects_from_runs([])
