"""The README's results tables are generated from the committed reports, never edited by hand."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "readme_tables.py"


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", *args], capture_output=True, text=True, timeout=120)


def rewrite(readme: Path, results: Path) -> str:
    """Run the script on ``readme`` with the tables of ``results``; the rewritten text."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--readme", str(readme), "--results", str(results)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return readme.read_text()


def table_from(tmp_path: Path, name: str, results_csv: str) -> str:
    """The README text after the script renders table ``name`` from ``results_csv``."""
    folder = tmp_path / "results" / name
    folder.mkdir(parents=True)
    (folder / "results.csv").write_text(results_csv)
    readme = tmp_path / "README.md"
    readme.write_text(f"<!-- table:{name} -->\n<!-- /table:{name} -->\n")
    return rewrite(readme, tmp_path / "results")


def test_the_readme_tables_match_the_committed_results():
    done = check()
    assert done.returncode == 0, done.stderr
    names = done.stdout.split(": ", 1)[1].split(", ")
    assert {"cifar10_frontier", "retinamnist", "demo_seeds"} <= {n.strip() for n in names}
    for name in names:  # every table traces to a committed results.csv and its runs
        assert (REPO / "experiments" / "results" / name.strip() / "results.csv").is_file()


def test_a_hand_edited_table_is_caught(tmp_path):
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- table:retinamnist -->")
    row = readme.index("| none |", start)
    edited = readme[:row] + readme[row:].replace("0.485", "0.495", 1)
    (tmp_path / "README.md").write_text(edited)
    done = check("--readme", str(tmp_path / "README.md"))
    assert done.returncode == 1 and "never edit them by hand" in done.stderr
    fixed = subprocess.run([sys.executable, str(SCRIPT), "--readme", str(tmp_path / "README.md")], timeout=120)
    assert fixed.returncode == 0 and (tmp_path / "README.md").read_text() == readme


def test_settings_over_seeds_show_mean_and_spread(tmp_path):
    folder = tmp_path / "results" / "made_up"
    folder.mkdir(parents=True)
    columns = ["method", "params", "seed", "accuracy", "accuracy_loss_pp", "vfe", "vfe_reference", "ssim", "psnr",
               "epsilon", "run_dir", "setting", "seeds", "accuracy_mean", "accuracy_std", "accuracy_loss_pp_mean",
               "accuracy_loss_pp_std"]  # fmt: skip
    rows = [
        ["none", "-", seed, acc, 0.0, 1.0, 5.0, 1.0, 100.0, "nan", f"runs/{seed}", "none", 2, 0.5, 0.02, 0.0, 0.0]
        for seed, acc in ((0, 0.48), (1, 0.52))
    ] + [
        ["visualmixer", "target_ratio=3.0", seed, acc, loss, vfe, 7.0, 0.2, 14.0, "nan", f"runs/v{seed}",
         "visualmixer target_ratio=3.0", 2, 0.41, 0.01, 9.0, 1.0]
        for seed, acc, loss, vfe in ((0, 0.40, 8.0, 3.0), (1, 0.42, 10.0, 4.0))
    ]  # fmt: skip
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- table:made_up -->\nstale\n<!-- /table:made_up -->\n")
    text = rewrite(readme, tmp_path / "results")
    assert "| none | - | 2 | 0.500 ± 0.020 | 0.0 ± 0.0 |" in text
    assert "| visualmixer | target_ratio=3.0 | 2 | 0.410 ± 0.010 | 9.0 ± 1.0 | 3.50 |" in text  # VFE: mean of seeds
    assert "stale" not in text and text.count("| visualmixer |") == 1, "one row per setting"


def test_graded_experiments_show_the_strongest_attack(tmp_path):
    folder = tmp_path / "results" / "graded"
    folder.mkdir(parents=True)
    columns = ["method", "params", "seed", "accuracy", "accuracy_loss_pp", "vfe", "vfe_reference", "ssim", "psnr",
               "epsilon", "run_dir", "setting", "seeds", "accuracy_mean", "accuracy_std", "accuracy_loss_pp_mean",
               "accuracy_loss_pp_std", "attack_ssim", "attack_ssim_by", "attack_recognition", "attack_recognition_by",
               "attack_note", "epsilon_unit"]  # fmt: skip
    rows = [
        ["none", "-", 0, 0.5, 0.0, 1.0, 5.0, 1.0, 100.0, "nan", "runs/0", "none", 1, 0.5, "nan", 0.0, "nan",
         1.0, "clear images", 0.8, "clear images", "no privacy", ""],
        ["dp_sgd", "-", 0, 0.3, 20.0, 1.0, 5.0, 1.0, 100.0, 2.0, "runs/1", "dp_sgd", 1, 0.3, "nan", 20.0, "nan",
         "", "", "", "", "training-level DP", "example"],
    ]  # fmt: skip
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- table:graded -->\n<!-- /table:graded -->\n")
    text = rewrite(readme, tmp_path / "results")
    assert "| epsilon | attack SSIM | attack recognition |" in text and "|" + "---|" * 12 + "\n" in text
    assert "| 100.0 | – | 1.000 | 0.800 |" in text and "| 2.00 (example) | – | – |" in text


def test_mutation_scores_are_judged_against_their_aim(tmp_path):
    """85% in privacy/, 80% elsewhere; explained survivors (equivalent) leave the denominator."""
    text = table_from(
        tmp_path,
        "mutation",
        "module,mutants,killed,survived,equivalent,no_tests,not_run,measured_at\n"
        "fl_vmix.data.partition,100,81,19,0,0,0,abc1234\n"
        "fl_vmix.privacy.mixer,200,160,40,10,0,0,abc1234\n"
        "fl_vmix.privacy.vfe,100,84,16,0,0,0,abc1234\n",
    )
    assert "| `fl_vmix.data.partition` | 81 / 100 | 81.0% | 81.0% | 80% | yes | abc1234 |" in text
    assert "| `fl_vmix.privacy.mixer` | 160 / 200 | 80.0% | 84.2% | 85% | NO |" in text  # 160 / 190
    assert "| `fl_vmix.privacy.vfe` | 84 / 100 | 84.0% | 84.0% | 85% | NO |" in text


def test_speed_figures_show_each_releases_median_and_range_against_the_targets(tmp_path):
    """Medians over a release's runs (per measure), the range beside them, the targets judged on the latest."""
    text = table_from(
        tmp_path,
        "bench_vmix",
        "release,date,commit,load_at_start,device,hardware,threads,gather_32_img_per_s,vmix_32_img_per_s,"
        "vmix_fixed_32_over_gather,vmix_224_s_per_batch\n"
        "new,2026-12-02,b,0.1,cpu,cpu A,2,300000,40000,3.0,0.3\n"
        "new,2026-12-02,b,0.1,cpu,cpu A,2,100000,60000,5.0,0.2\n"
        "new,2026-12-02,b,0.1,cpu,cpu A,2,250000,52000,4.5,\n",
    )
    assert "| measure | new — cpu A (3 runs) | target | met (latest) |" in text
    assert "torch.gather`, 512 x 3x32x32 (img/s) | 250,000 (100,000-300,000) |  |  |" in text
    assert "synthetic (img/s) | 52,000 (40,000-60,000) | ≥ 50,000 | yes |" in text
    assert "| the same, as a multiple of the floor | 4.5 (3-5) | ≤ 4 | NO |" in text
    assert "s | 0.25 (0.2-0.3) | ≤ 0.5 | yes |" in text, "a run without the measure is left out"
    assert "real CIFAR-10 test images (img/s) | – |  |  |" in text


def test_speed_table_keeps_only_each_machines_latest_release(tmp_path):
    """History stays in the results file: an earlier release on the same machine, and runs whose hardware
    was not recorded, are not in the README's table; a machine whose latest release is older keeps its column."""
    text = table_from(
        tmp_path,
        "bench_vmix",
        "release,hardware,vmix_32_img_per_s\n"
        'r0,,10000\nr0,"not recorded, 2 cores",20000\n'
        "r1,cpu A,30000\nr1,cpu B,70000\nr2,cpu A,40000\nr2,cpu A,42000\n",
    )
    assert "| measure | r1 — cpu B (1 run) | r2 — cpu A (2 runs) | target | met (latest) |" in text
    assert "synthetic (img/s) | 70,000 | 41,000 (40,000-42,000) | ≥ 50,000 | NO |" in text


def test_one_release_on_two_machines_makes_two_columns(tmp_path):
    """Speed figures compare only on the same hardware: a release measured on two machines is not pooled."""
    text = table_from(
        tmp_path,
        "bench_vmix",
        "release,hardware,vmix_32_img_per_s\nr1,cpu A,30000\nr1,cpu B,70000\nr1,cpu B,72000\nr1,cpu A,31000\n",
    )
    assert "| measure | r1 — cpu A (2 runs) | r1 — cpu B (2 runs) | target | met (latest) |" in text
    assert "synthetic (img/s) | 30,500 (30,000-31,000) | 71,000 (70,000-72,000) | ≥ 50,000 | yes |" in text
