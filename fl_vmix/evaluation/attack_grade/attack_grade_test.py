"""The grading command on a tiny experiment made in code: two image-level settings and a training-level one."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from fl_vmix.evaluation import report
from fl_vmix.evaluation.attack_grade import grade as grade_module
from fl_vmix.evaluation.attack_grade.__main__ import main
from fl_vmix.evaluation.attack_grade.settings import experiment_settings
from fl_vmix.evaluation.attacks._testing import one_thread
from fl_vmix.evaluation.frontier_report import PLOT, START
from fl_vmix.evaluation.privacy_axis import ATTACK_COLUMNS, CLEAR_NOTE, TRAINING_LEVEL_NOTE, setting_stem
from fl_vmix.evaluation.report_test import finished_run

_one_thread = pytest.fixture(autouse=True)(one_thread)
TINY = [
    "--victims", "12", "--public", "60", "--learned-budget-s", "3", "--learned-epochs", "1", "--widths", "4", "8",
    "--candidates", "4", "--candidate-rounds", "1", "--classifier-epochs", "1", "--classifier-budget-s", "3",
    "--recogniser-epochs", "1", "--recogniser-budget-s", "3", "--device", "cpu",
]  # fmt: skip


@pytest.fixture()
def experiment(tiny_experiment, tmp_path) -> Path:
    runs = tmp_path / "runs"
    for seed in (0, 1):
        finished_run(runs / f"clear{seed}", tiny_experiment("privacy=none", f"seed={seed}"), 0.9 - seed / 50, 1.0, 1.0)
        finished_run(runs / f"vm{seed}", tiny_experiment(f"seed={seed}"), 0.7 + seed / 50, 3.0, 0.2)
        finished_run(runs / f"dp{seed}", tiny_experiment("privacy=dp_sgd", f"seed={seed}"), 0.5, 1.0, 1.0, 1.5)
    assert report.main(["collect", "--experiment", "tiny", "--out", str(tmp_path / "results"), str(runs)]) == 0
    return tmp_path / "results"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_settings_collapse_seeds_and_leave_training_level_dp_out(experiment):
    settings, training = experiment_settings(experiment / "tiny")
    assert [s.method for s in settings] == ["none", "visualmixer"], "two seeds each: one setting each"
    assert settings[1].params["block_sizes"] == [2, 1] and settings[1].stem.startswith("imagefolder-visualmixer-")
    assert len(training) == 1 and "dp_sgd" in training[0]


def test_grading_writes_json_resumes_and_adds_the_columns(experiment, monkeypatch, capsys):
    calls: list[str] = []
    for name, stage in list(grade_module.STAGES.items()):

        def counted(ctx, name=name, stage=stage):
            calls.append(name)
            return stage(ctx)

        monkeypatch.setitem(grade_module.STAGES, name, counted)
    out = experiment / "tiny"
    assert main(["--experiment", "tiny", "--results", str(experiment), *TINY]) == 0
    graded = sorted((out / "attacks").glob("*.json"))
    assert len(graded) == 2 and len(calls) == 2 * len(grade_module.STAGES)
    vm = json.loads(next(p for p in graded if "visualmixer" in p.name).read_text())
    assert vm["complete"] and vm["victims"]["n"] == 12 and vm["public"]["n"] == 60
    assert vm["command"].startswith("python -m fl_vmix.evaluation.attack_grade --experiment tiny")
    assert vm["config"]["learned_budget_s"] == 3 and set(vm["timings"]) == set(grade_module.STAGES)
    assert vm["chance"] == pytest.approx(1 / 3)
    learned = vm["attacks"]["learned"]
    assert 0 < learned["ssim"] < 1 and 0 <= learned["recognition"] <= 1 and learned["training"]["steps"] >= 1
    assert vm["attacks"]["candidate_search"]["block_sizes"] == [2, 1]
    best = max(a["ssim"] for a in vm["attacks"].values() if a.get("ssim") is not None)
    assert vm["attack_ssim"] == best and vm["attack_ssim_by"] in vm["attacks"]
    clear = json.loads(next(p for p in graded if "none" in p.name).read_text())
    assert clear["attack_ssim"] == pytest.approx(1.0) and clear["attack_ssim_by"] == "clear images"
    assert clear["attacks"]["learned"] == {"applicable": False, "reason": "clear images"}

    # Finished settings are skipped: nothing runs again and the files stay as they were.
    before = {p: p.read_text() for p in graded}
    assert main(["--experiment", "tiny", "--results", str(experiment), *TINY]) == 0
    assert len(calls) == 2 * len(grade_module.STAGES) and {p: p.read_text() for p in graded} == before

    # An interrupted grade resumes at the stage it was in.
    path = next(p for p in graded if "visualmixer" in p.name)
    partial = json.loads(path.read_text())
    del partial["complete"], partial["attacks"]["obfuscated_classifier"]
    path.write_text(json.dumps(partial))
    calls.clear()
    assert main(["--experiment", "tiny", "--results", str(experiment), *TINY]) == 0
    assert calls == ["obfuscated_classifier"] and json.loads(path.read_text())["complete"]

    # Grades made with other budgets are regraded in the stages those budgets change, the others kept.
    kept = json.loads(path.read_text())["attacks"]["candidate_search"]
    calls.clear()
    longer = [*TINY[: TINY.index("--learned-budget-s") + 1], "4", *TINY[TINY.index("--learned-budget-s") + 2 :]]
    assert main(["--experiment", "tiny", "--results", str(experiment), *longer, "--list"]) == 0 and not calls
    # Without saying so, other budgets stop before overwriting grades: hours of attacks, committed ones included.
    before = {p: p.read_text() for p in graded}
    assert main(["--experiment", "tiny", "--results", str(experiment), *longer]) == 2 and not calls
    assert {p: p.read_text() for p in graded} == before
    assert "graded with other budgets" in capsys.readouterr().err
    assert main(["--experiment", "tiny", "--results", str(experiment), *longer, "--regrade"]) == 0
    assert calls == ["learned", "learned"], "both settings, the learned stage only"
    vm = json.loads(path.read_text())
    assert vm["complete"] and vm["config"]["learned_budget_s"] == 4 and vm["attacks"]["candidate_search"] == kept
    assert vm["stages"]["learned"]["key"]["learned_budget_s"] == 4

    # --rerun runs the named attacks again on the selected settings only (e.g. after a busy machine).
    calls.clear()
    rerun = ["--rerun", "obfuscated_classifier", "--only", "*visualmixer*"]
    assert main(["--experiment", "tiny", "--results", str(experiment), *longer, *rerun]) == 0
    assert calls == ["obfuscated_classifier"] and json.loads(path.read_text())["attacks"]["candidate_search"] == kept
    vm = json.loads(path.read_text())

    rows = _rows(out / "results.csv")
    assert list(rows[0])[-len(ATTACK_COLUMNS) :] == ATTACK_COLUMNS
    by_method = {r["method"]: r for r in rows}
    assert float(by_method["none"]["attack_ssim"]) == pytest.approx(1.0)
    assert by_method["none"]["attack_note"] == CLEAR_NOTE
    assert float(by_method["visualmixer"]["attack_ssim"]) == pytest.approx(vm["attack_ssim"])
    assert by_method["dp_sgd"]["attack_ssim"] == "" and by_method["dp_sgd"]["attack_note"] == TRAINING_LEVEL_NOTE
    text = (out / "report.md").read_text()
    assert text.count(START) == 1 and "Pareto front (accuracy against attack SSIM)" in text
    assert (out / PLOT).stat().st_size > 1000

    # Regenerating the report from its runs keeps the attack columns and the section.
    assert report.main(["collect", "--experiment", "tiny", "--out", str(experiment), str(out / "runs")]) == 0
    rows = _rows(out / "results.csv")
    assert set(ATTACK_COLUMNS) <= set(rows[0]) and float(rows[0]["attack_ssim"]) == pytest.approx(1.0)
    assert (out / "report.md").read_text().count(START) == 1


def test_only_and_unknown_patterns(experiment, capsys):
    assert main(["--experiment", "tiny", "--results", str(experiment), "--only", "nothing-*", *TINY]) == 2
    assert "matches none of" in capsys.readouterr().err
    assert main(["--experiment", "tiny", "--results", str(experiment), "--list"]) == 0
    assert not (experiment / "tiny" / "attacks").exists()


def test_stems_are_readable_and_distinct():
    stem = setting_stem("cifar10", "visualmixer", {"block_sizes": (2, 1), "region_size": 8, "target_vfe": None})
    assert stem == "cifar10-visualmixer-block_sizes=2.1+region_size=8"
    long = {f"parameter_{i}": "x" * 20 for i in range(10)}
    a, b = setting_stem("d", "m", long), setting_stem("d", "m", {**long, "parameter_9": "y" * 20})
    assert len(a) <= 150 and a != b


def test_commit_is_dirty_only_when_the_named_paths_are_edited(tmp_path):
    """A benchmark appends its results to a tracked file: that must not mark the code of its next run as edited."""

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("x = 1\n")
    (tmp_path / "results.csv").write_text("run\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = grade_module.commit(tmp_path)
    assert len(head) == 40 and not head.endswith("-dirty")
    (tmp_path / "results.csv").write_text("run\n1\n")
    assert grade_module.commit(tmp_path) == head + "-dirty"
    assert grade_module.commit(tmp_path, paths=("code",)) == head
    (tmp_path / "code" / "a.py").write_text("x = 2\n")
    assert grade_module.commit(tmp_path, paths=("code",)) == head + "-dirty"
